"""The `paligemma` teacher's model: PaliGemma / PaliGemma 2 (transformers) with closed-vocabulary answers.

Modes:
- `constrained` (default): one shared prefill of the batch (image + prompt, prefix-LM attention), then ONE
  forward of the flattened class-text trie on that cached prefix: every trie node is a token placed after the
  prompt, attending to the whole prefix and, causally, to its own ancestors only (a 4D "tree" mask), at the
  position it would have in a normal decode. Its logits give, for every node, the log-probs of the allowed next
  tokens, so each class's probability (sum of its token log-probs plus EOS, softmax over classes) and the
  trie-restricted greedy answer both follow without any further model call (no K separate prefills, no
  decoding loop). The greedy answer equals `generate(..., prefix_allowed_tokens_fn=trie)`.
- `generate`: free greedy generation (`max_new_tokens`), matched to a class after lower-casing and
  keeping letters only; an answer that matches no class is returned unmatched (label None), never guessed.

This module does not sample videos or store labels, and never downloads anything unless the model id is not
cached and `local_files_only` is off. It imports torch; the backend is registered (without importing it) in
`_paligemma_teacher.py`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from distill.errors import TeacherError, first_line
from distill.label._teacher import TeacherAnswer, build_prompt, describe_teacher, match_class, one_hot
from distill.label._trie import ClassTrie

if TYPE_CHECKING:
    from distill.config import TaskConfig
    from distill.video import Frame

logger = logging.getLogger(__name__)

_LOGIT_BYTES = 256 * 2**20  # float32 logits materialised at once when normalising the trie's log-probs


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda if available else cpu; anything else is checked (`cuda:1` without a GPU is an error)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise TeacherError(f"unknown device {spec!r}; use --device cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"--device {spec} but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on GPU, float32 on CPU."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def class_token_ids(tokenizer: Any, prompt: str, texts: list[str], names: list[str]) -> list[list[int]]:
    """Token ids of each class text as it follows the prompt (`<bos>prompt\\n` + text).

    SentencePiece merges depend on what precedes a word, so each text is tokenised after the prompt and the
    prompt's own tokens are cut off; a text that merges across the boundary falls back to tokenising alone.
    """
    head = (tokenizer.bos_token or "") + prompt + "\n"
    base = tokenizer(head, add_special_tokens=False)["input_ids"]
    result = []
    for name, text in zip(names, texts):
        full = tokenizer(head + text, add_special_tokens=False)["input_ids"]
        ids = full[len(base) :] if full[: len(base)] == base else tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise TeacherError(f"class {name!r} (text {text!r}) tokenises to nothing; give it a text made of words")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise TeacherError(
                f"class {name!r} (text {text!r}) tokenises to nothing the model knows (unknown characters); "
                "use plain words"
            )
        result.append(list(ids))
    return result


class PaliGemmaTeacher:
    """A loaded PaliGemma answering with the task's classes (the `Teacher` protocol). Build with
    `load_paligemma(cfg)`, or `build_teacher(cfg)` with `teacher.backend` paligemma.

    Attributes:
        model, processor: the transformers model (eval mode, on `device`) and its processor.
        trie: the `ClassTrie` of the class texts' token ids (`class_ids`).
        prefix_ids: (1, P) the prompt's token ids (image tokens, BOS, prompt, newline), shared by every image.
        input_size: the model's square input side; callers may pre-shrink frames to it.
    """

    def __init__(self, model: Any, processor: Any, cfg: TaskConfig, device: torch.device) -> None:
        self.model, self.processor, self.device = model, processor, device
        self.classes: tuple[str, ...] = cfg.class_names
        self.texts = [c.text for c in cfg.classes]
        self.mode = cfg.teacher.mode
        self._cache_arg = _cache_argument(model.model.language_model)  # what the decoder calls its cache
        self.max_new_tokens = cfg.teacher.max_new_tokens
        self.prompt = build_prompt(cfg)
        self._description = describe_teacher(cfg)
        self.input_size = _input_side(processor.image_processor)
        tok = processor.tokenizer
        side = self.input_size or 224
        dummy = processor(
            images=[np.zeros((side, side, 3), np.uint8)], text=["<image>" + self.prompt], return_tensors="pt"
        )
        self.prefix_ids = dummy["input_ids"][:1].to(device)
        self.class_ids = class_token_ids(tok, self.prompt, self.texts, list(self.classes))
        self.trie = ClassTrie.build(self.class_ids, eos=tok.eos_token_id, names=self.classes)
        self._tree = self._tree_inputs()

    def describe(self) -> dict[str, Any]:
        return dict(self._description)

    def model_inputs(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of RGB uint8 images: the shared prompt ids and the images' pixel values."""
        processor = self.processor.image_processor
        on_device = {"device": self.device} if getattr(processor, "backend", None) == "torchvision" else {}
        pixels = processor(images=list(images), return_tensors="pt", input_data_format="channels_last", **on_device)
        ids = self.prefix_ids.expand(len(images), -1)
        return {
            "input_ids": ids,
            "pixel_values": pixels["pixel_values"].to(self.device, self.model.dtype),
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),  # 0 = prefix: image and prompt attend bidirectionally
        }

    def label(self, frames: Sequence[Frame]) -> list[TeacherAnswer | None]:
        """One answer per frame (BGR pixels, as OpenCV gives them); see the module docstring for the two modes."""
        return list(self.label_rgb([cv2.cvtColor(f.image, cv2.COLOR_BGR2RGB) for f in frames]))

    @torch.inference_mode()
    def label_rgb(self, images: Sequence[np.ndarray]) -> list[TeacherAnswer]:
        """Answer for each RGB uint8 (H, W, 3) image (what `label` hands the model after the colour conversion)."""
        if len(images) == 0:
            return []
        inputs = self.model_inputs(list(images))
        with quiet_transformers():
            return self._constrained(inputs) if self.mode == "constrained" else self._generate(inputs)

    # --- constrained --------------------------------------------------------------------------------------

    def _tree_inputs(self) -> dict[str, Any]:
        """Token ids and positions of the trie nodes placed after the P prompt tokens (masks: `_tree_masks`)."""
        p = self.prefix_ids.shape[1]
        depth = torch.from_numpy(self.trie.depth[1:])
        return {
            "ids": torch.from_numpy(self.trie.tokens[1:])[None].to(self.device),
            # PaliGemma positions are 1-indexed: the prompt holds 1..P, a node at depth d sits at P + d.
            "positions": (p + depth)[None].to(self.device),
            "query": p - 1 + depth,  # the sequence index each node would have in a normal decode
            "ancestors": torch.from_numpy(self.trie.ancestor_mask()),  # (N-1, N-1): causal along each path only
            "slots": torch.from_numpy(np.maximum(self.trie.slot_tokens, 0)).to(self.device),  # (N, A)
            "masks": {},  # built on first use, per number of cached prefix keys in sliding-window layers
        }

    def _tree_masks(self, cache: Any) -> dict[str, torch.Tensor]:
        """4D masks (1, 1, N-1, cached keys + N-1) of the trie nodes for each layer type, as generate would see.

        Full-attention layers see the whole prompt; PaliGemma 2's sliding-window layers cache only the last
        `window - 1` prompt keys, and a node sees those within `window` of its own sequence index.
        """
        tree, p = self._tree, self.prefix_ids.shape[1]
        text = self.model.config.get_text_config()
        sliding = "sliding_attention" in (getattr(text, "layer_types", None) or [])
        layer = next((x for x in getattr(cache, "layers", []) if getattr(x, "is_sliding", False)), None)
        kept = int(layer.keys.shape[-2]) if sliding and layer is not None else p
        if kept not in tree["masks"]:
            n = tree["ancestors"].shape[0]
            masks = {"full_attention": torch.cat([torch.ones(n, p, dtype=torch.bool), tree["ancestors"]], 1)}
            if sliding:
                q, window = tree["query"], text.sliding_window
                keys = torch.cat([torch.arange(p - kept, p), q])
                allowed = torch.cat([torch.ones(n, kept, dtype=torch.bool), tree["ancestors"]], 1)
                masks["sliding_attention"] = allowed & (q[:, None] - keys[None, :] < window)
            for kind, mask in masks.items():
                if text._attn_implementation == "eager":  # eager adds the mask to the scores
                    lowest = torch.finfo(self.model.dtype).min
                    mask = torch.zeros(mask.shape, dtype=self.model.dtype).masked_fill(~mask, lowest)
                masks[kind] = mask[None, None].to(self.device)
            tree["masks"][kept] = masks
        return tree["masks"][kept]

    def _node_logits(self, b: int, cache: Any) -> torch.Tensor:
        """(B, N-1, V) next-token logits at every trie node: one forward of the decoder on the cached prefix."""
        tree = self._tree
        n = tree["ids"].shape[1]
        masks = {kind: m.expand(b, -1, -1, -1) for kind, m in self._tree_masks(cache).items()}
        # The decoder itself, not PaliGemma's forward, so that each layer type gets its own mask.
        hidden = self.model.model.language_model(
            input_ids=tree["ids"].expand(b, n),
            position_ids=tree["positions"].expand(b, n),
            attention_mask=masks if len(masks) > 1 else masks["full_attention"],
            use_cache=True,
            **{self._cache_arg: cache},
        ).last_hidden_state
        logits = self.model.lm_head(hidden)
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _constrained(self, inputs: dict[str, torch.Tensor]) -> list[TeacherAnswer]:
        b = inputs["input_ids"].shape[0]
        tree = self._tree
        out = self.model(**inputs, use_cache=True, logits_to_keep=1)  # the one shared prefill
        root = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
        nodes = self._node_logits(b, out.cache if "cache" in out else out.past_key_values)  # (B, N-1, V)
        slot_lp = torch.cat(
            [root.gather(1, tree["slots"][0].expand(b, -1))[:, None], _slot_logprobs(nodes, tree["slots"][1:])], 1
        )
        slot_lp = slot_lp.cpu().numpy().astype(np.float64)  # (B, N, A)
        scores = self.trie.scores(slot_lp)  # (B, K) log p(class text + EOS | image, prompt)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
        chosen = self.trie.greedy(slot_lp)  # (B,)
        return [TeacherAnswer(self.classes[k], probs[i], self.texts[k]) for i, k in enumerate(chosen)]

    # --- generate ---------------------------------------------------------------------------------------

    def _generate(self, inputs: dict[str, torch.Tensor]) -> list[TeacherAnswer]:
        tok = self.processor.tokenizer
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.model.generation_config.pad_token_id or tok.pad_token_id,
        )
        raws = tok.batch_decode(out[:, self.prefix_ids.shape[1] :], skip_special_tokens=True)
        answers = []
        for raw in raws:
            k = match_class(raw, self.classes, self.texts)
            answers.append(
                TeacherAnswer(None if k is None else self.classes[k], one_hot(k, len(self.classes)), raw.strip())
            )
        return answers


def _input_side(image_processor: Any) -> int | None:
    """The square side the image processor resizes to (224, 448, 896 for PaliGemma), if it says."""
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return int(max(get("height") or 0, get("width") or 0)) or None


def image_processor_side(cfg: TaskConfig) -> int | None:
    """`PaliGemmaTeacher.input_size` for `cfg.teacher.model`, from its image processor's configuration alone (the
    weights are not loaded); None if that cannot be read (a missing folder: building the teacher says why)."""
    from transformers import AutoImageProcessor

    source = os.path.expanduser(cfg.teacher.model)
    if not Path(source).exists() and _looks_like_path(source):
        return None
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=cfg.teacher.local_files_only)
    except Exception:  # any reason: the caller falls back to building the teacher, which reports it properly
        logger.debug("could not read %s's image processor before loading it", cfg.teacher.model, exc_info=True)
        return None
    return _input_side(processor)


def _slot_logprobs(logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """(B, M, A) log-softmax values of `logits` (B, M, V) at token ids `slots` (M, A), in float32, chunked."""
    b, m, v = logits.shape
    step = max(1, _LOGIT_BYTES // max(1, b * v * 4))
    parts = []
    for j in range(0, m, step):
        chunk = logits[:, j : j + step].float()
        parts.append(chunk.gather(2, slots[j : j + step].expand(b, -1, -1)) - torch.logsumexp(chunk, -1, keepdim=True))
    return torch.cat(parts, 1)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def _load_error(source: str, exc: Exception, local_only: bool) -> str:
    text = str(exc).strip()
    if Path(source).expanduser().exists():
        return (
            f"cannot load a PaliGemma model from {source} ({first_line(exc)}); "
            "point --teacher-model at a folder written by save_pretrained"
        )
    if any(word in text.lower() for word in ("gated", "401", "403", "restricted", "unauthorized")):
        return (
            f"{source} is gated on the Hugging Face Hub: accept its licence at https://huggingface.co/{source} and run "
            "`huggingface-cli login`, or pass --teacher-model /local/folder"
        )
    why = "is not in the local Hugging Face cache (--local-files-only)" if local_only else "could not be downloaded"
    return (
        f"teacher model {source} {why}; accept its licence at https://huggingface.co/{source} and run "
        "`huggingface-cli login` on a connected machine, "
        "or pass --teacher-model /local/folder (with --local-files-only offline)"
    )


def _cache_argument(decoder: Any) -> str:
    """The decoder's name for the key/value cache: `cache` (transformers >= 5.2x), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' loading bars, notices and deprecation warnings out of distill's output, unless distill
    logs at DEBUG (`--debug`); its errors still show."""
    if logging.getLogger("distill").isEnabledFor(logging.DEBUG):
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformers\.")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _attention(config: Any) -> str:
    """SDPA, except for decoders with attention soft-capping (Gemma 2, i.e. PaliGemma 2), which SDPA cannot do."""
    if getattr(config.get_text_config(), "attn_logit_softcapping", None) is not None:
        logger.info("the decoder caps attention logits (PaliGemma 2), which SDPA cannot do: using eager attention")
        return "eager"
    return "sdpa"


def load_paligemma(cfg: TaskConfig) -> PaliGemmaTeacher:
    """Load `cfg.teacher.model` (hub id or local folder): bf16 on GPU, fp32 on CPU, SDPA attention (eager for
    PaliGemma 2, whose soft-capped attention SDPA cannot compute), no remote code.

    Raises:
        TeacherError: a missing folder, weights that are gated or not cached offline, a model that is not
            PaliGemma, or class texts that tokenise to nothing; one line naming the fix.
    """
    from transformers import AutoConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    t = cfg.teacher
    source = os.path.expanduser(t.model)
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    if not Path(source).exists() and _looks_like_path(source):
        raise TeacherError(
            f"teacher model folder {t.model} does not exist; pass --teacher-model /path/to/paligemma (a folder written "
            "by save_pretrained) or a hub id such as google/paligemma2-3b-mix-224"
        )
    opts = {"local_files_only": t.local_files_only, "trust_remote_code": False}
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(source, **opts)
            if config.model_type != "paligemma":
                raise TeacherError(
                    f"{t.model} is a {config.model_type!r} model, not PaliGemma; pass a PaliGemma checkpoint"
                )
            processor = PaliGemmaProcessor.from_pretrained(source, **opts)
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                source, config=config, dtype=dtype, attn_implementation=_attention(config), **opts
            )
        except (OSError, ValueError) as exc:
            raise TeacherError(_load_error(t.model, exc, t.local_files_only)) from None
    model.to(device).eval()
    logger.info("loaded %s on %s (%s)", t.model, device, str(dtype).removeprefix("torch."))
    return PaliGemmaTeacher(model, processor, cfg, device)
