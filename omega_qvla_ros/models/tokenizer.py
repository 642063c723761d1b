"""Tokenizers. No hub downloads, ever.

- `ByteTokenizer` (tiny / small models): ids 0..2 are PAD, BOS, EOS, bytes of the UTF-8
  text follow at 3..258, and 259..514 are reserved for Pi0.5's discretised state.
- `load_tokenizer(path)`: a local tokenizer file for real checkpoints (`tokenizer.json`
  through the `tokenizers` library, or a SentencePiece `.model`), with a clear error
  when the file or the library is missing.
"""
from __future__ import annotations

from pathlib import Path

import torch

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
STATE_OFFSET = BYTE_OFFSET + 256
BYTE_VOCAB = STATE_OFFSET + 256  # 515; model vocabularies round up to 520


class ByteTokenizer:
    vocab_size = BYTE_VOCAB

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [max_len], mask [max_len]); BOS + bytes, truncated, right padded."""
        ids = [BOS] + [b + BYTE_OFFSET for b in text.encode("utf-8")]
        ids = ids[:max_len]
        mask = [True] * len(ids) + [False] * (max_len - len(ids))
        ids = ids + [PAD] * (max_len - len(ids))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def encode_batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.encode(t, max_len) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def decode(self, ids) -> str:
        return bytes(int(i) - BYTE_OFFSET for i in ids
                     if BYTE_OFFSET <= int(i) < STATE_OFFSET).decode("utf-8", errors="replace")


class FileTokenizer:
    """A real checkpoint's tokenizer from a local file."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file {p} not found; real checkpoints need their "
                                    "tokenizer.json or SentencePiece .model next to them "
                                    "(nothing is downloaded)")
        self.path = p
        if p.suffix == ".json":
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise ImportError(f"{p} needs the `tokenizers` package (pip install tokenizers)") from None
            self._tok = Tokenizer.from_file(str(p))
            self._encode = lambda s: self._tok.encode(s).ids
            self.vocab_size = self._tok.get_vocab_size()
        elif p.suffix == ".model":
            try:
                import sentencepiece as spm
            except ImportError:
                raise ImportError(f"{p} needs the `sentencepiece` package") from None
            self._tok = spm.SentencePieceProcessor(model_file=str(p))
            self._encode = lambda s: [self._tok.bos_id()] + self._tok.encode(s)
            self.vocab_size = self._tok.get_piece_size()
        else:
            raise ValueError(f"unsupported tokenizer file {p} (expected tokenizer.json or .model)")

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = list(self._encode(text))[:max_len]
        mask = [True] * len(ids) + [False] * (max_len - len(ids))
        return torch.tensor(ids + [0] * (max_len - len(ids))), torch.tensor(mask)


def load_tokenizer(path: str | Path | None = None):
    """ByteTokenizer when `path` is None, else the local tokenizer file at `path`."""
    return ByteTokenizer() if path is None else FileTokenizer(path)
