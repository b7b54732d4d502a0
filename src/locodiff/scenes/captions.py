"""Captions of CLEVR scenes and the word-level tokenizer locodiff ships (nothing is downloaded).

A caption is a function of a ``Conditioning`` with attributes, so every label policy, cache and
evaluation of the location-conditioned models serves the text model unchanged. Each conditioner
becomes a six-word phrase — size, colour, material, shape, then a coarse position on a 3 x 3 grid
of the image (row word, column word) — e.g. ``"large red metal cube top left"``; phrases are
joined by ``"and"``; the empty conditioning is the empty caption (the null prompt of guidance).
``count_word=True`` puts a count phrase first (``"three objects"``). ``positions=False`` leaves the
two position words out (``"large red metal cube"``): prompts that name objects, not where they
are, as the paper's SDXL prompts did; each phrase then keeps its block with padding in place of
the position words.

Token layout (``caption_ids``): every slot of the conditioning owns a fixed block of
``PHRASE_TOKENS`` positions, so a batch is built without Python loops and a dropped slot is a
block of padding. ``phrase_index`` gives each position's phrase (the count phrase is 0, slot n is
n + 1, padding -1): the text encoder binds words within a phrase from it, and the locality probes
group a phrase's tokens from it. ``WordTokenizer`` reads and writes the same ids as text.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..errors import InputError
from .vocab import COLOR_NAMES, MATERIALS, SHAPES, SIZE_NAMES

PAD = "<pad>"
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ROW_WORDS = ("top", "middle", "bottom")
COLUMN_WORDS = ("left", "centre", "right")
VOCABULARY: tuple[str, ...] = (
    PAD, "and", "object", "objects", *NUMBER_WORDS, *SIZE_NAMES, *COLOR_NAMES, *MATERIALS, *SHAPES,
    *ROW_WORDS, *COLUMN_WORDS,
)
# Word classes, for per-class summaries of token influence.
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "size": SIZE_NAMES, "colour": COLOR_NAMES, "material": MATERIALS, "shape": SHAPES,
    "position": ROW_WORDS + COLUMN_WORDS, "count": NUMBER_WORDS + ("object", "objects"),
    "joiner": ("and",), "padding": (PAD,),
}
PHRASE_TOKENS = 7  # "and" (or nothing, for the first phrase) + six words
COUNT_TOKENS = 2  # the count phrase: a number word and "object(s)"
_ID = {w: i for i, w in enumerate(VOCABULARY)}
assert len(_ID) == len(VOCABULARY), "the vocabulary has a duplicate word"


def word_id(word: str) -> int:
    try:
        return _ID[word]
    except KeyError:
        raise InputError(f"unknown caption word {word!r}; the vocabulary is {list(VOCABULARY[1:])}") from None


def caption_length(max_objects: int, count_word: bool = False) -> int:
    """Tokens of a caption with room for ``max_objects`` phrases."""
    return COUNT_TOKENS * count_word + PHRASE_TOKENS * max_objects


def _table(words: tuple[str, ...], device: torch.device | str | None = None) -> Tensor:
    return torch.tensor([_ID[w] for w in words], device=device)


def caption_ids(cond: Conditioning, max_objects: int, count_word: bool = False,
                positions: bool = True) -> tuple[Tensor, Tensor]:
    """``(ids [B, T], phrase_index [B, T])`` for the captions of ``cond`` (see the module doc).

    Slot n's phrase starts with "and" unless no present slot comes before it. Every present slot
    needs all four attributes; slots beyond ``max_objects`` are an error (the caption has no room).
    """
    if cond.attributes is None and cond.mask.any():
        raise InputError("a caption needs the objects' attributes; this conditioning has none")
    cond = Conditioning(cond.locations, cond.mask, cond._attributes_or_unknown())
    b, n = cond.mask.shape
    present = cond.mask
    if n > max_objects:
        if present[:, max_objects:].any():
            raise InputError(f"a caption names at most {max_objects} objects; this conditioning has "
                             f"{int(present.sum(1).max())}")
        present = present[:, :max_objects]
        n = max_objects
    attrs = cond.attributes[:, :n].cpu()
    present = present.cpu()
    if (attrs[present] < 0).any():
        raise InputError("a captioned object lacks an attribute (colour, shape, size or material is -1)")
    a = attrs.clamp_min(0)
    col = (cond.locations[:, :n, 0].cpu() * 3).long().clamp(0, 2)
    row = (cond.locations[:, :n, 1].cpu() * 3).long().clamp(0, 2)
    first = present & (present.long().cumsum(1) == 1)
    joiner = torch.where(first, _ID[PAD], _ID["and"])
    words = torch.stack([
        joiner, _table(SIZE_NAMES)[a[..., 2]], _table(COLOR_NAMES)[a[..., 0]], _table(MATERIALS)[a[..., 3]],
        _table(SHAPES)[a[..., 1]], _table(ROW_WORDS)[row], _table(COLUMN_WORDS)[col],
    ], -1)  # [B, n, 7]
    if not positions:
        words[..., -2:] = _ID[PAD]
    ids = torch.where(present[..., None], words, _ID[PAD])
    phrase = torch.where(present[..., None], torch.arange(1, n + 1)[None, :, None], -1).expand(b, n, PHRASE_TOKENS)
    phrase = torch.where(ids == _ID[PAD], -1, phrase)
    pad_slots = max_objects - n
    ids = torch.cat([ids.reshape(b, -1), torch.full((b, pad_slots * PHRASE_TOKENS), _ID[PAD])], 1)
    phrase = torch.cat([phrase.reshape(b, -1), torch.full((b, pad_slots * PHRASE_TOKENS), -1)], 1)
    if count_word:
        k = present.sum(1).clamp_max(len(NUMBER_WORDS) - 1)
        count = torch.stack([_table(NUMBER_WORDS)[k], torch.where(k == 1, _ID["object"], _ID["objects"])], -1)
        count = torch.where((k > 0)[:, None], count, _ID[PAD])  # the empty caption stays empty
        ids = torch.cat([count, ids], 1)
        phrase = torch.cat([torch.where(count == _ID[PAD], -1, 0), phrase], 1)
    return ids.to(cond.device), phrase.to(cond.device)


class WordTokenizer:
    """Text <-> ids over ``VOCABULARY``: whitespace-separated words, padded to ``length``."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise InputError(f"tokenizer length {length}: expected >= 1")
        self.length = length
        self.vocabulary = VOCABULARY

    def encode(self, texts: list[str]) -> Tensor:
        rows = []
        for text in texts:
            ids = [word_id(w) for w in text.lower().split()]
            if len(ids) > self.length:
                raise InputError(f"caption {text!r} has {len(ids)} words; this model reads at most {self.length}")
            rows.append(ids + [_ID[PAD]] * (self.length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), self.length)

    def decode(self, ids: Tensor) -> list[str]:
        return [" ".join(VOCABULARY[i] for i in row.tolist() if i != _ID[PAD]) for row in ids]


def phrase_index_of(ids: Tensor) -> Tensor:
    """Phrase numbers for packed text ids (as ``WordTokenizer.encode`` gives): a new phrase starts
    at each "and"; a leading count phrase (number word + "object(s)") is phrase 0; -1 = padding.
    Numbers may differ from ``caption_ids``' (slot-numbered) ones; only equality matters."""
    phrase = (ids == _ID["and"]).long().cumsum(1) + 1
    if ids.shape[1] >= COUNT_TOKENS:
        counted = torch.isin(ids[:, 0], _table(NUMBER_WORDS, ids.device))
        counted &= torch.isin(ids[:, 1], _table(("object", "objects"), ids.device))
        lead = counted[:, None] & (torch.arange(ids.shape[1], device=ids.device)[None] < COUNT_TOKENS)
        phrase = torch.where(lead, 0, phrase)
    return torch.where(ids == _ID[PAD], -1, phrase)


def captions(cond: Conditioning, max_objects: int, count_word: bool = False, positions: bool = True) -> list[str]:
    """The captions of ``cond`` as text (what ``caption_ids`` encodes)."""
    ids, _ = caption_ids(cond, max_objects, count_word, positions)
    return WordTokenizer(ids.shape[1]).decode(ids)
