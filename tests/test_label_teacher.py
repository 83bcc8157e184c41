"""The PaliGemma teacher on a tiny random PaliGemma (saved and loaded back with `from_pretrained`), the class
trie, prompt and answer matching. The teacher is called as every caller does, with BGR `Frame`s."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_paligemma import tiny_config, tiny_paligemma_dir

from distill.config import load_config
from distill.errors import TeacherError
from distill.label import build_prompt, build_teacher, match_class, normalize_answer
from distill.label._trie import ClassTrie
from distill.video import Frame

ONE_TOKEN = "cat,dog,bird"
SHARED_PREFIX = "idle,idle warning,running,stopped"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_paligemma_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """`teachers(classes, mode, text_model)`: a teacher on the tiny PaliGemma ("gemma") or PaliGemma 2 ("gemma2")."""
    cache = {}

    def get(classes: str, mode: str = "constrained", text_model: str = "gemma"):
        if (classes, mode, text_model) not in cache:
            folder = tiny_paligemma_dir(tmp_path_factory.getbasetemp(), text_model)
            cache[classes, mode, text_model] = build_teacher(tiny_config(folder, classes, **{"teacher.mode": mode}))
        return cache[classes, mode, text_model]

    return get


DECODERS = pytest.mark.parametrize("text_model", ["gemma", "gemma2"])  # PaliGemma and PaliGemma 2


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """RGB images, what the model is given."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + i % 3 * 8, 40, 3), dtype=np.uint8) for i in range(n)]


def frames(imgs: list[np.ndarray]) -> list[Frame]:
    """The same pixels as `Frame`s (BGR, as OpenCV decodes them): what callers hand a teacher."""
    return [Frame("v.mp4", i, i / 25, np.ascontiguousarray(img[..., ::-1])) for i, img in enumerate(imgs)]


def generate_labels(teacher, imgs) -> list[str | None]:
    """transformers' own greedy decoding, restricted by the teacher's trie, mapped back to class names."""
    inputs = teacher.model_inputs(imgs)
    p = inputs["input_ids"].shape[1]
    longest = max(len(ids) for ids in teacher.class_ids)
    with torch.inference_mode():
        out = teacher.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=longest + 1,
            prefix_allowed_tokens_fn=teacher.trie.prefix_allowed_tokens_fn(p),
        )
    labels = []
    for seq in out[:, p:].tolist():
        answer = seq[: seq.index(teacher.trie.eos)] if teacher.trie.eos in seq else seq
        labels.append(teacher.classes[teacher.class_ids.index(answer)] if answer in teacher.class_ids else None)
    return labels


@DECODERS
@pytest.mark.parametrize("classes", [ONE_TOKEN, SHARED_PREFIX])
def test_constrained_answers_are_classes_with_distributions(teachers, classes, text_model):
    teacher = teachers(classes, text_model=text_model)
    answers = teacher.label(frames(images(24)))
    assert len(answers) == 24
    assert all(a.label in teacher.classes for a in answers)
    probs = np.stack([a.probs for a in answers])
    assert probs.shape == (24, len(teacher.classes)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert all(a.confidence == pytest.approx(float(a.probs.max())) for a in answers)
    assert len({a.label for a in answers}) >= 2, "a random tiny model should not answer the same for every image"
    assert all(a.raw == teacher.texts[teacher.classes.index(a.label)] for a in answers)


def test_class_tokenisation_covers_both_cases(teachers):
    assert all(len(ids) == 1 for ids in teachers(ONE_TOKEN).class_ids)
    idle, idle_warning = teachers(SHARED_PREFIX).class_ids[:2]
    assert len(idle_warning) > 1 and idle_warning[: len(idle)] == idle  # "idle" is a prefix of "idle warning"


@DECODERS
@pytest.mark.parametrize("classes", [ONE_TOKEN, SHARED_PREFIX])
@pytest.mark.parametrize("seed", [0, 1])
def test_constrained_label_equals_transformers_generate_with_the_same_trie(teachers, classes, seed, text_model):
    teacher = teachers(classes, text_model=text_model)
    imgs = images(16, seed)
    ours = [a.label for a in teacher.label(frames(imgs))]  # BGR frames; generate_labels gives the model RGB
    assert ours == generate_labels(teacher, imgs)
    assert len(set(ours)) >= 2


@pytest.mark.parametrize(
    ("text_model", "expected"), [("gemma", {"idle", "idle warning"}), ("gemma2", {"idle warning"})]
)
def test_shared_prefix_classes_are_chosen_somewhere(teachers, text_model, expected):
    """The cross-check above only means something for "idle" vs "idle warning" if they occur."""
    teacher = teachers(SHARED_PREFIX, text_model=text_model)
    labels = {a.label for seed in range(2) for a in teacher.label(frames(images(16, seed)))}
    assert expected <= labels


@DECODERS
@pytest.mark.parametrize("classes", [ONE_TOKEN, SHARED_PREFIX])
def test_batch_equals_one_at_a_time(teachers, classes, text_model):
    teacher = teachers(classes, text_model=text_model)
    imgs = images(10, seed=3)
    batch = teacher.label(frames(imgs))
    single = [teacher.label([frame])[0] for frame in frames(imgs)]
    assert [a.label for a in batch] == [a.label for a in single]
    np.testing.assert_allclose(np.stack([a.probs for a in batch]), np.stack([a.probs for a in single]), atol=1e-5)


@DECODERS
def test_probs_equal_k_separate_teacher_forced_forwards(teachers, text_model):
    """The one-forward trie scoring (4D tree mask on the cached prefix) equals scoring each class text on its own:
    a full forward of prompt + text + EOS with the text as PaliGemma's causal suffix (token_type_ids = 1).
    With Gemma 2 this also checks the sliding-window layers (window 8 < prompt length) and soft-capping."""
    teacher = teachers(SHARED_PREFIX, text_model=text_model)
    imgs = images(4, seed=5)
    inputs = teacher.model_inputs(imgs)
    p = inputs["input_ids"].shape[1]
    scores = []
    with torch.inference_mode():
        for ids in teacher.class_ids:
            suffix = torch.tensor([*ids, teacher.trie.eos]).expand(len(imgs), -1)
            seq = torch.cat([inputs["input_ids"], suffix], 1)
            types = torch.cat([inputs["token_type_ids"], torch.ones_like(suffix)], 1)
            logits = teacher.model(
                input_ids=seq,
                pixel_values=inputs["pixel_values"],
                token_type_ids=types,
                attention_mask=torch.ones_like(seq),
            ).logits
            lp = logits[:, p - 1 : -1].float().log_softmax(-1).gather(2, suffix[..., None])[..., 0]
            scores.append(lp.sum(1))
    expected = torch.stack(scores, 1).softmax(1).numpy()
    got = np.stack([a.probs for a in teacher.label(frames(imgs))])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_generate_mode_keeps_raw_and_never_guesses(teachers, monkeypatch):
    teacher = teachers(SHARED_PREFIX, "generate")
    tok = teacher.processor.tokenizer
    answers = ["idle warning?", "idle", "idl", "running fast", ":stopped,"]  # characters the tiny vocab knows
    new = [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for text in answers]
    width = max(map(len, new))
    new = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in new])

    def fake_generate(**kwargs):
        assert kwargs["max_new_tokens"] == 10 and kwargs["do_sample"] is False
        return torch.cat([kwargs["input_ids"], new], 1)

    monkeypatch.setattr(teacher.model, "generate", fake_generate)
    got = teacher.label(frames(images(5)))
    assert [a.label for a in got] == ["idle warning", "idle", None, None, "stopped"]
    assert [a.raw for a in got] == answers
    np.testing.assert_allclose(got[2].probs, 0.25)  # unmatched: uniform, confidence 1/K
    assert got[0].probs.tolist() == [0, 1, 0, 0]


def test_generate_mode_on_the_real_model_returns_raw_text(teachers):
    teacher = teachers(ONE_TOKEN, "generate")
    answers = teacher.label(frames(images(3)))
    assert all(a.raw is not None and (a.label is None or a.label in teacher.classes) for a in answers)
    assert all(
        a.label == (None if match_class(a.raw, teacher.classes, teacher.texts) is None else a.label) for a in answers
    )


def test_describe_holds_the_exact_prompt(teachers):
    teacher = teachers(SHARED_PREFIX)
    d = teacher.describe()
    assert d["backend"] == "paligemma" and d["mode"] == "constrained"
    assert d["prompt"] == "answer en which of these best describes the image: idle, idle warning, running or stopped?"
    assert d["prompt"] == teacher.prompt and d["class_texts"] == ["idle", "idle warning", "running", "stopped"]
    assert teacher.input_size == 32  # the tiny model's square input: callers may pre-shrink frames to it
    # the prompt the model sees is exactly that text after the image tokens and BOS, then a newline
    text = teacher.processor.tokenizer.decode(teacher.prefix_ids[0], skip_special_tokens=False)
    assert text.endswith("<bos>" + d["prompt"] + "\n")


def test_unknown_characters_in_a_class_text_are_refused(tiny_model):
    with pytest.raises(TeacherError, match="tokenises to nothing"):
        build_teacher(tiny_config(tiny_model, "cat,☃☃"))


# --- pure helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (
            "which of these best describes the image: {choices}?",
            "answer en which of these best describes the image: a, b or c?",
        ),
        ("what is the machine doing?", "answer en what is the machine doing?"),
        ("answer fr quel état ? {choices}", "answer fr quel état ? a, b or c"),
    ],
)
def test_build_prompt(question, expected):
    assert build_prompt(load_config(overrides={"classes": "a,b,c", "question": question})) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Idle", 0),
        (" idle.\n", 0),
        ("Idle-Warning!", 1),
        ("idle warning", 1),
        ("idl", None),
        ("", None),
        ("the idle", None),
        ("RUN", 2),
    ],
)
def test_match_class_is_exact_after_normalising(raw, expected):
    assert match_class(raw, ["idle", "idle warning", "run"], ["idle", "idle warning", "running machine"]) == expected


def test_normalize_answer():
    assert normalize_answer("  Ärger, 42 Idle!") == "ärgeridle"


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([[5], []], "tokenises to nothing"),
        ([[5, 1], [6]], "end-of-text"),
        ([[5, 6], [5, 6]], "tokenise identically"),
    ],
)
def test_trie_refuses_bad_class_sequences(sequences, message):
    with pytest.raises(TeacherError, match=message):
        ClassTrie.build(sequences, eos=1, names=["a", "b"])


def test_trie_greedy_scores_and_allowed():
    trie = ClassTrie.build([[5], [5, 7], [6]], eos=1)  # "idle", "idle warning", "running"
    assert trie.allowed([]) == [5, 6]
    assert trie.allowed([5]) == [1, 7]  # EOS (1) or continue
    assert trie.allowed([5, 7]) == [1]
    assert trie.allowed([6, 1, 0]) == [1]
    # slot log-probs (B=1, N nodes, A slots): root prefers 5; after 5, EOS beats 7 -> "idle"
    lp = np.full((1, trie.num_nodes, trie.slot_tokens.shape[1]), -np.inf)
    lp[0, 0, :2] = np.log([0.6, 0.4])  # root: 5, 6
    lp[0, 1, :2] = np.log([0.7, 0.3])  # after 5: EOS, 7
    lp[0, 2, 0] = 0.0  # after 5 7: EOS
    lp[0, 3, 0] = np.log(0.5)  # after 6: EOS
    assert trie.greedy(lp).tolist() == [0]
    np.testing.assert_allclose(np.exp(trie.scores(lp))[0], [0.42, 0.18, 0.2])
