"""A tiny PaliGemma trained on the CPU to name an image's dominant colour, saved in a form vLLM's CPU backend loads.

vLLM needs what the random test model (`tests/_tiny_paligemma.py`) does not give it: an attention head_dim of
32 or 64, a "\\n" token, a boolean `add_bos_token`, and the SigLIP weights under `vision_tower.vision_model.*`
(transformers 5 saves them as `vision_tower.*`). A random model answers nothing sensible, so a few hundred
training steps on generated images (a dominant colour with clutter of other colours) teach it to say the colour:
tests can then check answers, not just shapes.

Training mixes the two attentions the model is run with: PaliGemma's bidirectional prefix (transformers, the
in-process teacher) and plain causal attention (vLLM on CPU), so both answer the colour confidently.

Used by tests/test_openai_teacher.py (the opt-in real vLLM test) and bench/teacher.py. This module does not
start a server and does not test anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
IMAGE_SIZE = 32
PATCH_SIZE = 8
_WORDS = ["answer", "en", "which", "of", "these", "best", "describes", "the", "image", ":", ",", "?", "or"]


def colour_image(rng: np.random.Generator, colour: str, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 RGB: `colour` covers most of the image, a few patches of other colours and noise."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.array(COLOURS[colour], np.float32) * rng.uniform(0.7, 1.1)
    others = [c for c in COLOURS if c != colour]
    for _ in range(rng.integers(0, 4)):  # clutter: at most ~3 patches of a quarter side each
        w, h = rng.integers(size // 8, size // 4, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        image[y : y + h, x : x + w] = COLOURS[others[rng.integers(len(others))]]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _tokenizer():
    """A Gemma-style BPE tokenizer (trained with `tokenizers`) whose words include the prompt and the colours."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    words = _WORDS + list(COLOURS)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    corpus = [" ".join(words)] * 50 + [f"{w} {w}" for w in words for _ in range(20)]
    corpus += ["abcdefghijklmnopqrstuvwxyz", "\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges)


def _model(vocab: int, image_token: int):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "gemma",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,  # vLLM's CPU attention takes 32, 64, ...; not 16
            "vocab_size": vocab,
        },
        image_token_index=image_token,
        vocab_size=vocab,
        projection_dim=64,
        hidden_size=64,
    )
    return PaliGemmaForConditionalGeneration(config)


def train_colour_paligemma(directory: str | Path, steps: int = 200, seed: int = 0) -> Path:
    """Build, train (`steps` Adam steps of 16 images, ~1 min on 2 cores) and save the model to `directory`."""
    import torch
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    directory = Path(directory)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = _tokenizer()
    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = _model(len(processor.tokenizer), processor.image_token_id)
    prompt = "<image>answer en which of these best describes the image: " + prompt_choices()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    names = list(COLOURS)
    for step in range(steps):
        answers = [names[i] for i in rng.integers(0, len(names), 16)]
        images = [colour_image(rng, a, int(rng.integers(32, 65))) for a in answers]
        batch = processor(images=images, text=[prompt] * 16, suffix=answers, return_tensors="pt")
        if step % 2:  # causal attention everywhere, as vLLM computes it on CPU
            batch.pop("token_type_ids")
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    _for_vllm(directory)
    return directory


def prompt_choices() -> str:
    """`red, green, blue or yellow?`, the class list as `build_prompt` writes it."""
    names = list(COLOURS)
    return ", ".join(names[:-1]) + " or " + names[-1] + "?"


def _for_vllm(directory: Path) -> None:
    """Rename SigLIP weights to `...vision_tower.vision_model.*` and make `add_bos_token` a boolean."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    weights = load_file(path)
    renamed = {
        re.sub(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)", r"\1vision_model.", k): v for k, v in weights.items()
    }
    save_file(renamed, path, metadata={"format": "pt"})
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = False  # the processor puts <bos> after the image tokens itself
    config["add_eos_token"] = False
    config_path.write_text(json.dumps(config, indent=2))
