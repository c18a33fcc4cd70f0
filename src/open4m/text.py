"""The 4M text tokenizer: WordPiece with the official special-token layout (OFFICIAL-4M-SPEC §1.3).

One tokenizer serves every text-like modality (caption, det, metadata, color_palette, ...). It is a
HuggingFace ``tokenizers`` WordPiece model with a fixed block of special tokens at the start of the
vocabulary, identical to the official ``text_tokenizer_4m_wordpiece_30k.json``:

====================  ============  =========================================================
token                 id (30k file) role
====================  ============  =========================================================
``[PAD]``             0             padding of the batch tensors
``[UNK]``             1             unknown word piece
``[SOS]``             2             start of sequence (unused by 4M)
``[EOS]``             3             appended to every sequence by the masking code
``[S_0]``..``[S_199]``  4..203      span-masking sentinels
``v0=0``..``v3=999``  204..4203     value tokens: box coordinates, metadata, palettes
class names           4204..        single tokens even when multi-word (``wine glass``)
====================  ============  =========================================================

Sentinels and value tokens match only as whole words and are not lowercased; class names are
lowercased like ordinary text. The normaliser lowercases and strips accents (BERT style), the
pre-tokeniser splits on whitespace and punctuation, and no ``[SOS]``/``[EOS]`` is added by
:meth:`TextTokenizer.encode` (the masking code appends ``[EOS]`` itself).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, trainers
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from open4m.atomic import write_text_atomic

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
NUM_VALUE_AXES = 4
NUM_VALUE_BINS = 1000
TOKENIZER_FILE = "tokenizer.json"
CORPUS_SUFFIXES = (".txt", ".jsonl", ".tar")


def sentinel_token(k: int) -> str:
    """The sentinel string for span ``k``, e.g. ``[S_1]``."""
    return f"[S_{k}]"


def value_token(axis: int, value: int) -> str:
    """The value-token string ``v<axis>=<value>``, e.g. ``v0=12`` (axis 0..3, value 0..999)."""
    if not 0 <= axis < NUM_VALUE_AXES or not 0 <= value < NUM_VALUE_BINS:
        raise ValueError(
            f"value token: axis must be in 0..{NUM_VALUE_AXES - 1} and value in 0..{NUM_VALUE_BINS - 1}, "
            f"got axis={axis}, value={value}"
        )
    return f"v{axis}={value}"


def layout_tokens(class_names: Sequence[str] = ()) -> list[AddedToken]:
    """The special tokens in their official order: specials, sentinels, value tokens, class names.

    A tokenizer trained with this list puts token ``i`` of the list at id ``i``.
    """
    names = [str(c).strip() for c in class_names]
    bad = [c for c in names if not c or c.startswith("[") or _is_value_string(c)]
    if bad:
        raise ValueError(f"class names must be non-empty words, not special or value tokens; got {bad}")
    if len(set(n.lower() for n in names)) != len(names):
        raise ValueError(f"class names must be unique (case-insensitive); got {names}")
    tokens = [AddedToken(t, single_word=False, normalized=False) for t in (PAD, UNK, SOS, EOS)]
    tokens += [AddedToken(sentinel_token(k), single_word=True, normalized=False) for k in range(NUM_SENTINELS)]
    tokens += [
        AddedToken(f"v{a}={v}", single_word=True, normalized=False)
        for a in range(NUM_VALUE_AXES)
        for v in range(NUM_VALUE_BINS)
    ]
    tokens += [AddedToken(c, single_word=True, normalized=True) for c in names]
    return tokens


def _is_value_string(token: str) -> bool:
    head, sep, tail = token.partition("=")
    return bool(sep) and len(head) == 2 and head[0] == "v" and head[1].isdigit() and tail.isdigit()


class TextTokenizer:
    """WordPiece tokenizer with the 4M special-token layout.

    Build one with :meth:`load` (the official file or a saved one) or :meth:`train` (a new corpus).

    Attributes:
        pad_id, unk_id, sos_id, eos_id: ids of ``[PAD]``, ``[UNK]``, ``[SOS]``, ``[EOS]`` (0, 1, 2, 3).
        sentinel_ids: ``{k: id of [S_k]}`` for k in 0..199.
        vocab_size: number of ids, added tokens included.
    """

    def __init__(self, tokenizer: Tokenizer, source: str = "<memory>") -> None:
        self._tok = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        missing = [t for t in (PAD, UNK, SOS, EOS) if t not in vocab]
        missing += [sentinel_token(k) for k in range(NUM_SENTINELS) if sentinel_token(k) not in vocab]
        missing += [
            f"v{a}={v}" for a in range(NUM_VALUE_AXES) for v in range(NUM_VALUE_BINS) if f"v{a}={v}" not in vocab
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"{source}: not a 4M text tokenizer: missing special tokens {shown}")
        wrong = [f"{t}={vocab[t]}" for i, t in enumerate((PAD, UNK, SOS, EOS)) if vocab[t] != i]
        if wrong:
            raise ValueError(f"{source}: expected [PAD]=0 [UNK]=1 [SOS]=2 [EOS]=3, got {' '.join(wrong)}")
        self.pad_id, self.unk_id, self.sos_id, self.eos_id = 0, 1, 2, 3
        self.sentinel_ids: dict[int, int] = {k: vocab[sentinel_token(k)] for k in range(NUM_SENTINELS)}
        self._sentinel_set = frozenset(self.sentinel_ids.values())
        self._value_ids = [[vocab[f"v{a}={v}"] for v in range(NUM_VALUE_BINS)] for a in range(NUM_VALUE_AXES)]
        self._id_to_value = {i: (a, v) for a, ids in enumerate(self._value_ids) for v, i in enumerate(ids)}
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load a tokenizer from a ``tokenizers`` JSON file or a directory holding ``tokenizer.json``."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"text tokenizer: no such file {file}")
        try:
            tokenizer = Tokenizer.from_str(file.read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(f"{file}: not a HuggingFace tokenizers JSON file ({err})") from None
        return cls(tokenizer, source=str(file))

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int,
        class_names: Sequence[str] = (),
        show_progress: bool = False,
    ) -> TextTokenizer:
        """Train a new WordPiece tokenizer on ``corpus`` (an iterable of strings) with the 4M layout.

        The recipe is the official one (``train_unified_wordpiece_tokenizer``): lowercasing BERT
        normaliser and pre-tokeniser, WordPiece decoder, special tokens first. ``vocab_size`` counts
        the special tokens; the single characters of the corpus are always kept, so a tiny
        ``vocab_size`` can yield a slightly larger vocabulary, and a small corpus a smaller one.
        """
        specials = layout_tokens(class_names)
        if vocab_size < len(specials):
            raise ValueError(
                f"text tokenizer: vocab_size {vocab_size} cannot hold the {len(specials)} special tokens "
                f"(4 specials + {NUM_SENTINELS} sentinels + {NUM_VALUE_AXES * NUM_VALUE_BINS} value tokens "
                f"+ {len(class_names)} class names)"
            )
        tokenizer = Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100))
        tokenizer.normalizer = BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tokenizer.pre_tokenizer = BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=0,
            show_progress=show_progress,
            continuing_subword_prefix="##",
            special_tokens=specials,
        )
        tokenizer.train_from_iterator((str(line) for line in corpus), trainer=trainer)
        return cls(tokenizer, source="<trained>")

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``directory/tokenizer.json`` atomically; refuse to replace an existing one unless asked."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / TOKENIZER_FILE
        if file.exists() and not overwrite:
            raise ValueError(f"text tokenizer: {file} already exists (pass overwrite=True / --force to replace it)")
        return write_text_atomic(file, self.to_json())

    # ----------------------------------------------------------------------------- encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, exactly as the ``tokenizers`` file encodes it (no ``[EOS]`` added)."""
        if not isinstance(text, str):
            raise ValueError(f"text tokenizer: encode expects a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` over a list of strings (run in parallel by ``tokenizers``)."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"text tokenizer: encode_batch expects strings; item {bad[0]} is {type(texts[bad[0]])}")
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Special tokens are kept by default: value tokens and class names are special,
        and the official code decodes with ``skip_special_tokens=False`` (OFFICIAL-4M-SPEC §5.4)."""
        return self._tok.decode(self._checked_ids(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` over a list of id lists."""
        checked = [self._checked_ids(ids) for ids in batch]
        return self._tok.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def word_starts(self, ids: Sequence[int]) -> list[int]:
        """For each whitespace-separated word of :meth:`decode` ``(ids)``, the index in ``ids`` of the token
        it starts at (word pieces and punctuation joined by decoding belong to the word they join), e.g.
        ``[v0=1, cube, ##s]`` decodes to ``"v0=1 cubes"`` → ``[0, 1]``."""
        checked = self._checked_ids(ids)
        counts = [len(t.split()) for t in self._tok.decode_batch([checked[: k + 1] for k in range(len(checked))],
                                                                 skip_special_tokens=False)]
        words = counts[-1] if counts else 0
        return [next(k for k, c in enumerate(counts) if c > w) for w in range(words)]

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text tokenizer: ids must be in 0..{self.vocab_size - 1}, got {bad[:5]}")
        return out

    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary entry, or ``None``."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary entry of one id, or ``None``."""
        return self._tok.id_to_token(int(token_id))

    def to_json(self) -> str:
        """The tokenizer as HF ``tokenizers`` JSON (what :meth:`save` writes)."""
        return self._tok.to_str(pretty=True)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer's JSON: names exactly which tokenizer produced a set of ids."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @functools.cached_property
    def class_names(self) -> list[str]:
        """The class-name tokens (normalised added tokens after the value tokens), in id order."""
        added = self._tok.get_added_tokens_decoder()
        last_value = max(self._value_ids[-1])
        return [added[i].content for i in sorted(added) if i > last_value and added[i].normalized]

    # ----------------------------------------------------------------------------- sentinels

    def sentinel_id(self, k: int) -> int:
        """Id of ``[S_k]``."""
        if k not in self.sentinel_ids:
            raise ValueError(f"text tokenizer: sentinel index must be in 0..{NUM_SENTINELS - 1}, got {k}")
        return self.sentinel_ids[k]

    def is_sentinel(self, token_id: int) -> bool:
        """Whether ``token_id`` is one of the ``[S_k]``."""
        return int(token_id) in self._sentinel_set

    def merge_span_masking(self, input_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
        """Rebuild the full sequence from a span-masked input and its target (official ``merge_span_masking``).

        Each sentinel in ``input_ids`` is replaced by the target tokens that follow the same sentinel
        in ``target_ids``; a sentinel absent from the target becomes nothing, and target tokens before
        the first sentinel are ignored. E.g. input ``a [S_1] d`` + target ``[S_1] b c [S_2]`` → ``a b c d``.
        """
        return self.merge_spans(input_ids, target_ids)[0]

    def merge_spans(self, input_ids: Sequence[int], target_ids: Sequence[int],
                    target_values: Sequence | None = None) -> tuple[list[int], list]:
        """:meth:`merge_span_masking`, carrying a value per target token along: ``(merged ids, values)``
        where a token from the target keeps its ``target_values`` entry and a given one gets None."""
        values = target_values if target_values is not None else [None] * len(target_ids)
        spans: dict[int, list[tuple[int, object]]] = {}
        current: int | None = None
        for token, value in zip(target_ids, values, strict=True):
            token = int(token)
            if token in self._sentinel_set:
                current = token
                spans.setdefault(token, [])
            elif current is not None:
                spans[current].append((token, value))
        merged: list[tuple[int, object]] = []
        for token in input_ids:
            token = int(token)
            if token in self._sentinel_set:
                merged.extend(spans.get(token, []))
            else:
                merged.append((token, None))
        return [t for t, _ in merged], [v for _, v in merged]

    # ----------------------------------------------------------------------------- value tokens

    def value_id(self, axis: int, value: int) -> int:
        """Id of the value token ``v<axis>=<value>``."""
        value_token(axis, value)  # validates the range
        return self._value_ids[axis][value]

    def value_of(self, token_id: int) -> tuple[int, int] | None:
        """``(axis, value)`` of a value-token id, or ``None`` for any other id."""
        return self._id_to_value.get(int(token_id))

    def is_value(self, token_id: int) -> bool:
        """Whether ``token_id`` is a ``v0``..``v3`` value token."""
        return int(token_id) in self._id_to_value


# --------------------------------------------------------------------------------- corpora


def corpus_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into the corpus files they hold (``.txt``, ``.jsonl``, ``.tar``)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(CORPUS_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"corpus: no {', '.join(CORPUS_SUFFIXES)} files under {p}")
            files += found
        elif p.is_file():
            if not p.name.endswith(CORPUS_SUFFIXES):
                raise ValueError(f"corpus: {p} is not one of {', '.join(CORPUS_SUFFIXES)}")
            files.append(p)
        else:
            raise FileNotFoundError(f"corpus: no such file or directory {p}")
    return files


def iter_corpus(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield the text lines of a corpus.

    - ``.txt``: one text per non-empty line.
    - ``.jsonl``: one JSON value per line: a string, or an object with a ``"caption"`` string.
    - ``.tar`` (WebDataset shards): every member whose name ends in ``.txt``, split into lines.
    """
    for file in corpus_files(paths):
        if file.name.endswith(".tar"):
            try:
                with tarfile.open(file) as tar:
                    for member in tar:
                        if member.isfile() and member.name.endswith(".txt"):
                            data = tar.extractfile(member)
                            yield from _lines(data.read().decode("utf-8", errors="replace") if data else "")
            except tarfile.TarError as err:
                raise ValueError(f"corpus: {file} is not a readable tar file ({err})") from None
        elif file.name.endswith(".jsonl"):
            with file.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield _caption_of(line, file, n)
        else:
            with file.open(encoding="utf-8", errors="replace") as f:
                yield from _lines(f.read())


def _lines(text: str) -> Iterator[str]:
    return (line for line in (s.strip() for s in text.splitlines()) if line)


def _caption_of(line: str, file: Path, n: int) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"corpus: {file}:{n} is not JSON ({err.msg})") from None
    if isinstance(value, dict):
        value = value.get("caption")
    if not isinstance(value, str):
        raise ValueError(f"corpus: {file}:{n} must be a JSON string or an object with a 'caption' string")
    return value
