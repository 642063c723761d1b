"""Tokenizers. No hub downloads, ever.

- `ByteTokenizer` (tiny / small models): ids 0..2 are PAD, BOS, EOS, bytes of the UTF-8
  text follow at 3..258, and 259..514 are reserved for Pi0.5's discretised state.
- `load_tokenizer(path)`: a local tokenizer file for real checkpoints (`tokenizer.json`
  through the `tokenizers` library, or a SentencePiece `.model`), with a clear error
  when the file or the library is missing.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
STATE_OFFSET = BYTE_OFFSET + 256
BYTE_VOCAB = STATE_OFFSET + 256  # 515; model vocabularies round up to 520
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "paligemma_tokenizer.model")


PADDING_SIDES = ("right", "left")


def pad_to(ids: list[int], max_len: int, pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [max_len], mask [max_len]) of already truncated ids, padded on `side` (left:
    decoder-only prompts that end where generation would start, e.g. GR00T N1.5's)."""
    n = max_len - len(ids)
    if side == "left":
        return (torch.tensor([pad_id] * n + ids, dtype=torch.long), torch.tensor([False] * n + [True] * len(ids)))
    return torch.tensor(ids + [pad_id] * n, dtype=torch.long), torch.tensor([True] * len(ids) + [False] * n)


def _side(side: str) -> str:
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side {side!r}; choose from {PADDING_SIDES}")
    return side


class ByteTokenizer:
    """UTF-8 bytes as tokens. `special`: strings that encode to one given id each (e.g. a
    model's image placeholder token), for prompts with placeholders and no tokenizer file."""

    vocab_size = BYTE_VOCAB

    def __init__(self, padding_side: str = "right", special: dict[str, int] | None = None) -> None:
        self.padding_side = _side(padding_side)
        self.special = dict(special or {})
        # longest first, so a marker that contains another wins; compiled once, used per prompt
        self._split = re.compile("(" + "|".join(re.escape(k) for k in sorted(self.special, key=len, reverse=True))
                                 + ")") if self.special else None

    def _bytes(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [max_len], mask [max_len]); BOS + bytes, truncated, padded (right by default)."""
        ids = [BOS]
        if self._split is not None:
            for part in self._split.split(text):
                ids += [self.special[part]] if part in self.special else self._bytes(part)
        else:
            ids += self._bytes(text)
        return pad_to(ids[:max_len], max_len, PAD, self.padding_side)

    pad_id = PAD

    def encode_batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.encode(t, max_len) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def decode(self, ids) -> str:
        return bytes(int(i) - BYTE_OFFSET for i in ids
                     if BYTE_OFFSET <= int(i) < STATE_OFFSET).decode("utf-8", errors="replace")


class TokenizerFileError(ValueError):
    """A tokenizer file that is missing, unreadable or of an unknown kind."""


class FileTokenizer:
    """A real checkpoint's tokenizer from a local file: `tokenizer.json` (Hugging Face
    `tokenizers`; its post-processor adds the special tokens, e.g. PaliGemma's <bos>) or
    a SentencePiece `.model` (<bos> + pieces, as openpi's PaligemmaTokenizer encodes).
    Right padding with the tokenizer's pad id, truncation to max_len (as LeRobot's
    TokenizerProcessorStep and openpi do); `padding_side="left"` and `pad_token` (default
    "<pad>") for prompts padded on the left, like Qwen3's with "<|endoftext|>"."""

    def __init__(self, path: str | Path, padding_side: str = "right", pad_token: str | None = None) -> None:
        self.padding_side = _side(padding_side)
        p = Path(path)
        if p.is_dir():
            for name in TOKENIZER_FILES:
                if (p / name).is_file():
                    p = p / name
                    break
        if not p.is_file():
            raise TokenizerFileError(
                f"tokenizer file {p} not found: real checkpoints need their tokenizer.json or "
                "SentencePiece tokenizer.model (e.g. PaliGemma's for Pi0.5); pass it with "
                "--tokenizer PATH (nothing is downloaded)")
        self.path = p
        if p.suffix == ".json":
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise TokenizerFileError(f"{p} needs the `tokenizers` package (pip install tokenizers)") from None
            try:
                self._tok = Tokenizer.from_file(str(p))
            except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions
                raise TokenizerFileError(f"{p}: not a readable tokenizer.json ({e})") from None
            self._tok.no_padding()
            self._tok.no_truncation()
            self._encode = lambda s: self._tok.encode(s).ids
            self.vocab_size = self._tok.get_vocab_size()
            pad = self._tok.token_to_id(pad_token or "<pad>")
        elif p.suffix == ".model":
            try:
                import sentencepiece as spm
            except ImportError:
                raise TokenizerFileError(f"{p} needs the `sentencepiece` package (pip install sentencepiece)") from None
            try:
                self._tok = spm.SentencePieceProcessor(model_file=str(p))
            except Exception as e:  # noqa: BLE001
                raise TokenizerFileError(f"{p}: not a readable SentencePiece model ({e})") from None
            self._encode = lambda s: [self._tok.bos_id()] + self._tok.encode(s)
            self.vocab_size = self._tok.get_piece_size()
            pad = self._tok.pad_id() if pad_token is None else self._tok.piece_to_id(pad_token)
        else:
            raise TokenizerFileError(f"unsupported tokenizer file {p} (expected tokenizer.json or a "
                                     "SentencePiece .model)")
        self.pad_id = pad if pad is not None and pad >= 0 else 0

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_to(list(self._encode(text))[:max_len], max_len, self.pad_id, self.padding_side)


def load_tokenizer(path: str | Path | None = None):
    """ByteTokenizer when `path` is None, else the local tokenizer file at `path`."""
    return ByteTokenizer() if path is None else FileTokenizer(path)
