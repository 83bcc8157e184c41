"""A tiny random PaliGemma, built on the fly: a real `PaliGemmaConfig`, a Gemma-style BPE tokenizer trained with
`tokenizers`, the real `PaliGemmaProcessor`; saved with `save_pretrained` so tests load it with `from_pretrained`.

Used by tests/test_label*.py and bench/teacher.py. Nothing is downloaded. This module does not test anything.
"""

from __future__ import annotations

from pathlib import Path

# Words the tokenizer learns. Class texts the tests use ("cat", "idle warning", ...) are whole words here, so
# "idle" and "idle warning" share their first token; the prompt words make the question tokenise sensibly.
_WORDS = [
    "answer",
    "en",
    "which",
    "of",
    "these",
    "best",
    "describes",
    "the",
    "image",
    ":",
    ",",
    "?",
    "or",
    "cat",
    "dog",
    "bird",
    "idle",
    "warning",
    "running",
    "stopped",
    "machine",
    "state",
    "is",
    "the",
    "what",
]
IMAGE_SIZE = 32
# (seed, init std) per decoder, chosen so that answers spread over the classes (see build_tiny_paligemma)
RANDOM_INIT = {"gemma": (2, 0.5), "gemma2": (3, 0.25)}
PATCH_SIZE = 8


def train_tokenizer():
    """A `GemmaTokenizer` whose vocab and merges were trained with `tokenizers` (Gemma's special tokens first)."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Train on words that start at a "▁", so no merge spans a word boundary (like SentencePiece).
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    corpus = [" ".join(_WORDS)] * 50 + [f"{w} {w}" for w in _WORDS for _ in range(20)]
    corpus += ["abcdefghijklmnopqrstuvwxyz", "\n"]
    trainer = trainers.BpeTrainer(vocab_size=260, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges)


def build_tiny_paligemma(
    directory: str | Path,
    seed: int | None = None,
    init_std: float | None = None,
    text_model: str = "gemma",
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    width: int = 32,
    layers: int = 2,
) -> Path:
    """Save a tiny random PaliGemma (model + processor) to `directory` and return it.

    `text_model="gemma2"` builds a PaliGemma 2 (Gemma 2 decoder: attention and final logit soft-capping,
    alternating sliding-window layers, with a window of 8 tokens so that it matters at this size).

    `init_std` is large on purpose: with the usual 0.02 a random model answers almost the same for every image,
    which would make label tests meaningless. With `RANDOM_INIT[text_model]` (the default) answers spread over the
    classes ("idle" and "idle warning" both win for some images with Gemma; "idle warning" with Gemma 2); the
    tests assert this, so a change that makes them vacuous fails loudly.
    """
    import torch
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    init_std = RANDOM_INIT[text_model][1] if init_std is None else init_std
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    seq_len = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = seq_len
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = len(processor.tokenizer)
    config = PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
            "vision_use_head": False,
        },
        text_config={
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "vocab_size": vocab,
            "initializer_range": init_std,
        }
        | _GEMMA2[text_model],
        image_token_index=processor.image_token_id,
        vocab_size=vocab,
        projection_dim=width,
        hidden_size=width,
    )
    config.text_config.initializer_range = init_std
    config.initializer_range = init_std
    torch.manual_seed(RANDOM_INIT[text_model][0] if seed is None else seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


_GEMMA2 = {
    "gemma": {"model_type": "gemma"},
    "gemma2": {
        "model_type": "gemma2",
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
    },
}
_BUILT: dict[tuple[str, str], Path] = {}


def tiny_paligemma_dir(root: str | Path, text_model: str = "gemma") -> Path:
    """Build the tiny model under `root` once per process (test modules share it) and return its folder."""
    key = (str(root), text_model)
    if key not in _BUILT:
        _BUILT[key] = build_tiny_paligemma(Path(root) / f"tiny-paligemma-{text_model}", text_model=text_model)
    return _BUILT[key]


def tiny_config(model_dir: str | Path, classes: str = "cat,dog,bird", **overrides):
    """A task config for the tiny model (CPU, offline)."""
    from distill.config import load_config

    flags = {"classes": classes, "teacher.model": str(model_dir), "teacher.local_files_only": True}
    flags |= {"teacher.device": "cpu"} | overrides
    return load_config(overrides=flags)
