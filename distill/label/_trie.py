"""A token trie of the class texts: closed-vocabulary greedy decoding and per-class scores from one forward.

Every trie node is one token of one or more class texts; node 0 is the root (the end of the prompt). A node
where a class text ends is *terminal*: there the answer may stop with EOS. At each node the allowed next tokens
are its children's tokens plus EOS if it is terminal, sorted by token id ("slots").

Given the log-probabilities of every node's slots (from one forward over the flattened trie on the cached
prompt), a class's score is the sum of its path's log-probs including the final EOS, and greedy decoding walks
from the root taking the best slot until it takes EOS. This module is numpy only; it does not run a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distill.errors import TeacherError


@dataclass(frozen=True)
class ClassTrie:
    """The trie of K class token sequences (build with `ClassTrie.build`).

    Attributes:
        eos: the end-of-answer token id.
        tokens: (N,) token of each node; node 0 (root) has -1.
        parents: (N,) parent node; -1 for the root.
        depth: (N,) tokens from the root (root 0).
        slot_tokens: (N, A) allowed next tokens per node, ascending, padded with -1.
        slot_next: (N, A) child node of each slot, -1 for EOS or padding.
        terminal: (N,) class index ending at the node, or -1.
        class_slots: (K, L + 1) flat indices into a node-major (N * A) slot array of each class's path (every
            token, then EOS); padded with N * A, which callers point at a zero.
    """

    eos: int
    tokens: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    slot_tokens: np.ndarray
    slot_next: np.ndarray
    terminal: np.ndarray
    class_slots: np.ndarray

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], eos: int, names: Sequence[str] | None = None) -> ClassTrie:
        """Build the trie; raises `TeacherError` if a sequence is empty, contains EOS, or repeats another."""
        names = list(names) if names is not None else [str(i) for i in range(len(sequences))]
        children: list[dict[int, int]] = [{}]
        tokens, parents, depth, terminal = [-1], [-1], [0], [-1]
        for k, seq in enumerate(sequences):
            if len(seq) == 0:
                raise TeacherError(f"class {names[k]!r} tokenises to nothing; give it a text made of words")
            if eos in seq:
                raise TeacherError(f"class {names[k]!r} contains the end-of-text token; rename it")
            node = 0
            for tok in seq:
                if tok not in children[node]:
                    children.append({})
                    tokens.append(int(tok))
                    parents.append(node)
                    depth.append(depth[node] + 1)
                    terminal.append(-1)
                    children[node][int(tok)] = len(tokens) - 1
                node = children[node][int(tok)]
            if terminal[node] != -1:
                raise TeacherError(
                    f"classes {names[terminal[node]]!r} and {names[k]!r} tokenise identically; "
                    "give them different texts"
                )
            terminal[node] = k
        n = len(tokens)
        slots = [sorted([*children[i].items()] + ([(eos, -1)] if terminal[i] != -1 else [])) for i in range(n)]
        width = max(len(s) for s in slots)
        slot_tokens = np.full((n, width), -1, np.int64)
        slot_next = np.full((n, width), -1, np.int64)
        for i, row in enumerate(slots):
            for j, (tok, nxt) in enumerate(row):
                slot_tokens[i, j], slot_next[i, j] = tok, nxt
        longest = max(len(s) for s in sequences)
        class_slots = np.full((len(sequences), longest + 1), n * width, np.int64)
        for k, seq in enumerate(sequences):
            node = 0
            for j, tok in enumerate([*seq, eos]):
                slot = int(np.flatnonzero(slot_tokens[node] == tok)[0])
                class_slots[k, j] = node * width + slot
                node = int(slot_next[node, slot])
        return cls(
            eos=int(eos),
            tokens=np.asarray(tokens, np.int64),
            parents=np.asarray(parents, np.int64),
            depth=np.asarray(depth, np.int64),
            slot_tokens=slot_tokens,
            slot_next=slot_next,
            terminal=np.asarray(terminal, np.int64),
            class_slots=class_slots,
        )

    @property
    def num_nodes(self) -> int:
        """Nodes including the root."""
        return len(self.tokens)

    def ancestor_mask(self) -> np.ndarray:
        """(N-1, N-1) bool over non-root nodes: row i may attend column j iff j is i or an ancestor of i."""
        n = self.num_nodes - 1
        mask = np.zeros((n, n), bool)
        for i in range(1, self.num_nodes):
            node = i
            while node > 0:
                mask[i - 1, node - 1] = True
                node = int(self.parents[node])
        return mask

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens allowed after `generated` (the answer so far); `[eos]` once off the trie or finished."""
        node = 0
        for tok in generated:
            hits = np.flatnonzero(self.slot_tokens[node] == tok)
            if tok == self.eos or len(hits) == 0:
                return [self.eos]
            node = int(self.slot_next[node, hits[0]])
        return [int(t) for t in self.slot_tokens[node] if t >= 0]

    def prefix_allowed_tokens_fn(self, prompt_length: int) -> Callable[[int, object], list[int]]:
        """A `prefix_allowed_tokens_fn` for transformers' `generate`, restricting answers to the class texts."""

        def fn(batch_id: int, input_ids: object) -> list[int]:
            return self.allowed([int(t) for t in input_ids[prompt_length:]])  # type: ignore[index]

        return fn

    def scores(self, slot_logprobs: np.ndarray) -> np.ndarray:
        """(B, K) summed log-probs of each class's tokens and EOS, from (B, N, A) slot log-probs."""
        flat = slot_logprobs.reshape(slot_logprobs.shape[0], -1)
        flat = np.concatenate([flat, np.zeros((flat.shape[0], 1), flat.dtype)], 1)  # padding -> 0
        return flat[:, self.class_slots].sum(-1)

    def greedy(self, slot_logprobs: np.ndarray) -> np.ndarray:
        """(B,) class index reached by greedy decoding over the allowed slots (ties go to the lowest token id)."""
        b = slot_logprobs.shape[0]
        node = np.zeros(b, np.int64)
        result = np.full(b, -1, np.int64)
        rows = np.arange(b)
        for _ in range(int(self.depth.max()) + 1):
            lp = np.where(self.slot_tokens[node] >= 0, slot_logprobs[rows, node], -np.inf)
            best = lp.argmax(-1)
            nxt = self.slot_next[node, best]
            done = result >= 0
            stop = (nxt < 0) & ~done
            result[stop] = self.terminal[node[stop]]
            node = np.where((nxt < 0) | done, node, nxt)
        return result
