"""The text tokenizer: exact agreement with the official 30k file, the 4M layout of trained ones, the CLI."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from open4m import cli, sequences
from open4m.text import NUM_SENTINELS, TextTokenizer, iter_corpus, layout_tokens

OFFICIAL_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / (
    "official-text-tokenizer-wordpiece-30k.json"
)
WORLD_CLASSES = ["sphere", "cube", "cylinder", "cone", "torus", "wine glass"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "gray", "cyan", "brown"]
N_SPECIALS = 4 + NUM_SENTINELS + 4 * 1000


def world_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sizes, materials = ["small", "large", "tiny"], ["shiny", "matte", "metallic", "rubber"]
    relations = ["left of", "right of", "behind", "in front of", "next to"]

    def obj() -> str:
        return f"{rng.choice(sizes)} {rng.choice(COLOURS)} {rng.choice(materials)} {rng.choice(WORLD_CLASSES)}"

    return [f"A {obj()} is {rng.choice(relations)} a {obj()}." for _ in range(n)]


@pytest.fixture(scope="module")
def official() -> Tokenizer:
    if not OFFICIAL_FILE.is_file():
        pytest.skip(f"official tokenizer fixture absent: {OFFICIAL_FILE}")
    return Tokenizer.from_file(str(OFFICIAL_FILE))


@pytest.fixture(scope="module")
def ours() -> TextTokenizer:
    if not OFFICIAL_FILE.is_file():
        pytest.skip(f"official tokenizer fixture absent: {OFFICIAL_FILE}")
    return TextTokenizer.load(OFFICIAL_FILE)


@pytest.fixture(scope="module")
def trained() -> TextTokenizer:
    return TextTokenizer.train(world_captions(2000), vocab_size=4400, class_names=WORLD_CLASSES)


def varied_strings() -> list[str]:
    """A few hundred strings: captions, box/palette/metadata strings, sentinels, unicode, edge cases."""
    rng = random.Random(1234)
    coco = ["person", "wine glass", "potted plant", "traffic light", "hot dog", "teddy bear", "cell phone"]
    out = ["", " ", "\t\n", "a", "A", "[PAD]", "[UNK]", "[SOS]", "[EOS]", "[S_0]", "[S_199]", "[S_200]", "[s_1]"]
    out += world_captions(80, seed=7) + [c.lower() for c in world_captions(40, seed=8)]
    out += ["A man riding a wave on top of a surfboard.", "Two dogs playing with a frisbee in the park!",
            "The wine glass is next to the potted plant; a Hot Dog on a plate.", "don't stop-believing (1999)"]
    for _ in range(70):
        boxes = []
        for _ in range(rng.randint(0, 6)):
            x0, x1 = sorted([rng.random(), rng.random()])
            y0, y1 = sorted([rng.random(), rng.random()])
            boxes.append({"box": [x0, y0, x1, y1], "class": rng.choice(coco + WORLD_CLASSES)})
        out.append(sequences.boxes_to_text(boxes))
    for _ in range(30):
        pal = [[rng.randint(0, 255) for _ in range(3)] for _ in range(rng.randint(1, 7))]
        out.append(sequences.palette_to_text(pal))
        out.append(sequences.metadata_to_text({"n_objects": rng.randint(0, 20), "brightness": rng.uniform(0, 255)}))
    for _ in range(40):  # sentinel-interleaved spans, as span masking produces them
        words = rng.choice(world_captions(5, seed=rng.randint(0, 99))).split()
        k = rng.randint(0, len(words))
        out.append(" ".join(words[:k] + [f"[S_{rng.randint(0, 199)}]"] + words[k + 2 :] + ["[EOS]"]))
    out += ["café déjà vu naïve", "Ångström über straße", "日本語のテキスト", "中文字符测试", "한국어 텍스트",
            "مرحبا بالعالم", "שלום עולם", "Привет, мир!", "emoji 😀🎉 test", "e\u0301 combining", "zero\u200bwidth",
            "control\x00\x07chars", "tab\tsep\tvalues", "ℕ ∑ ∫ ≤ ≥", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ"]
    out += ["v0=1000 v4=3 xv0=3 V0=3 v0=03 v0=-1", "v0=0v1=3", "v1=3,v0=4", "[S_1][S_2]", "a[S_1]b",
            "wine glasses", "wineglass", "WINE GLASS", "x" * 150, "word " * 600, "supercalifragilistic" * 3,
            " ".join(str(i) for i in range(300)), "!!!???...,,,;;;", "  leading and trailing  "]
    for _ in range(60):  # random printable soup
        alphabet = "abcdefghij XYZ0123456789=[]_-.,!?'\"éü日😀"
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))))
    return out


STRINGS = varied_strings()


def test_string_set_is_large_and_varied():
    assert len(STRINGS) >= 300
    assert len(set(STRINGS)) >= 290


def test_ids_equal_official_file(official, ours):
    for s in STRINGS:
        assert ours.encode(s) == official.encode(s).ids, s
    assert ours.encode_batch(STRINGS) == [e.ids for e in official.encode_batch(STRINGS)]


def test_decode_equals_official_file(official, ours):
    all_ids = [official.encode(s).ids for s in STRINGS]
    for ids in all_ids:
        assert ours.decode(ids) == official.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=True) == official.decode(ids, skip_special_tokens=True)
    assert ours.decode_batch(all_ids) == official.decode_batch(all_ids, skip_special_tokens=False)


def test_round_trips_exactly_where_the_official_file_does(official, ours):
    official_ok = [s for s in STRINGS if official.decode(official.encode(s).ids, skip_special_tokens=False) == s]
    assert len(official_ok) >= 150  # the structured strings and lower-case captions all round-trip
    for s in STRINGS:
        assert (ours.decode(ours.encode(s)) == s) == (s in official_ok), s


def test_official_layout(ours):
    assert (ours.pad_id, ours.unk_id, ours.sos_id, ours.eos_id) == (0, 1, 2, 3)
    assert ours.vocab_size == 30000
    assert ours.sentinel_ids == {k: 4 + k for k in range(200)}
    assert ours.sentinel_id(1) == 5  # hard-coded as s1_id in the official generate.py
    assert ours.is_sentinel(4) and ours.is_sentinel(203) and not ours.is_sentinel(204) and not ours.is_sentinel(3)
    for axis in range(4):
        for value in (0, 1, 500, 999):
            token_id = ours.value_id(axis, value)
            assert token_id == 204 + 1000 * axis + value
            assert ours.value_of(token_id) == (axis, value) and ours.is_value(token_id)
            assert ours.id_to_token(token_id) == f"v{axis}={value}"
    assert ours.value_of(4204) is None and ours.value_of(5) is None
    assert len(ours.class_names) == 80 and "wine glass" in ours.class_names
    assert ours.class_names[0] == ours.id_to_token(4204)
    with pytest.raises(ValueError, match="axis"):
        ours.value_id(4, 0)
    with pytest.raises(ValueError, match="sentinel"):
        ours.sentinel_id(200)


def _reference_merge(input_seq, decoder_seq, sentinel_ids):
    """The official merge_span_masking (text_tokenizer.py:115-135), written out for comparison."""
    splits, current = {}, None
    for t in decoder_seq:
        if t in sentinel_ids:
            current = t
        else:
            splits.setdefault(current, []).append(t)
    out = []
    for t in input_seq:
        out.extend(splits.get(t, [])) if t in sentinel_ids else out.append(t)
    return out


def _span_mask(seq, keep, sentinel_ids):
    """Official simple_span_masking for a fixed keep pattern: runs of dropped tokens become [S_1], [S_2], ..."""
    inp, tgt, k, prev_dropped = [], [], 1, False
    for token, kept in zip(seq, keep, strict=True):
        if kept:
            inp.append(token)
        elif not prev_dropped:
            inp.append(sentinel_ids[k])
            tgt.append(sentinel_ids[k])
            tgt.append(token)
            k += 1
        else:
            tgt.append(token)
        prev_dropped = not kept
    tgt.append(sentinel_ids[k])
    return inp, tgt


def test_merge_span_masking(trained):
    s = trained.sentinel_ids
    a, b, c, d = (trained.encode(w)[0] for w in ("red", "green", "blue", "cube"))
    assert trained.merge_span_masking([a, s[1], d], [s[1], b, c, s[2]]) == [a, b, c, d]
    assert trained.merge_span_masking([s[2], a, s[1]], [s[1], b, s[2], c, d, s[3]]) == [c, d, a, b]
    assert trained.merge_span_masking([a, s[5]], [b, s[1], c]) == [a]  # unknown sentinel → nothing
    rng = random.Random(0)
    for caption in world_captions(200, seed=3):
        seq = trained.encode(caption) + [trained.eos_id]
        keep = [rng.random() < 0.5 for _ in seq]
        inp, tgt = _span_mask(seq, keep, s)
        merged = trained.merge_span_masking(inp, tgt)
        assert merged == seq
        assert merged == _reference_merge(inp, tgt, set(s.values()))
        garbled = tgt[: rng.randint(0, len(tgt))]  # truncated targets (a model stopped early)
        assert trained.merge_span_masking(inp, garbled) == _reference_merge(inp, garbled, set(s.values()))


def test_trained_layout_matches_official_layout(trained):
    assert (trained.pad_id, trained.unk_id, trained.sos_id, trained.eos_id) == (0, 1, 2, 3)
    assert trained.sentinel_ids == {k: 4 + k for k in range(200)}
    assert [trained.value_id(a, v) for a in range(4) for v in range(1000)] == list(range(204, 4204))
    assert [trained.token_to_id(c) for c in WORLD_CLASSES] == list(range(4204, 4204 + len(WORLD_CLASSES)))
    assert trained.class_names == WORLD_CLASSES
    assert N_SPECIALS + len(WORLD_CLASSES) < trained.vocab_size <= 4400
    data = json.loads(trained.to_json())
    flags = {(t["content"], t["id"]): (t["special"], t["single_word"], t["normalized"]) for t in data["added_tokens"]}
    assert flags[("[PAD]", 0)] == (True, False, False)
    assert flags[("[S_7]", 11)] == (True, True, False)
    assert flags[("v3=999", 4203)] == (True, True, False)
    assert flags[("wine glass", 4209)] == (True, True, True)


def test_trained_pipeline_is_the_official_one(trained):
    if not OFFICIAL_FILE.is_file():
        pytest.skip("official tokenizer fixture absent")
    mine, theirs = json.loads(trained.to_json()), json.loads(OFFICIAL_FILE.read_text())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert mine[key] == theirs[key], key
    assert {k: v for k, v in mine["model"].items() if k != "vocab"} == {
        k: v for k, v in theirs["model"].items() if k != "vocab"
    }
    assert mine["added_tokens"][:N_SPECIALS] == theirs["added_tokens"][:N_SPECIALS]
    assert [t["normalized"] for t in mine["added_tokens"][N_SPECIALS:]] == [True] * len(WORLD_CLASSES)


def test_trained_tokenizer_learns_the_corpus(trained):
    corpus = world_captions(50, seed=11)
    for line in corpus:
        ids = trained.encode(line)
        assert trained.unk_id not in ids
        assert trained.decode(ids) == line.lower()
    # frequent words are whole tokens; class names are single tokens even when multi-word
    for word in ["shiny", "metallic", "behind", "yellow"]:
        assert len(trained.encode(word)) == 1, word
    assert trained.encode("A Wine Glass") == [trained.encode("a")[0], trained.token_to_id("wine glass")]


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cannot hold the 4204 special tokens"):
        TextTokenizer.train(["a b c"], vocab_size=1000)
    for bad in (["cube", "Cube"], ["v0=3"], ["[S_1]"], [""]):
        with pytest.raises(ValueError, match="class names"):
            TextTokenizer.train(["a b c"], vocab_size=5000, class_names=bad)
    assert len(layout_tokens(["sphere"])) == N_SPECIALS + 1


def test_save_load_round_trip(tmp_path, trained):
    path = trained.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]  # no temp file left
    again = TextTokenizer.load(tmp_path / "tok")
    assert again.fingerprint == trained.fingerprint
    for s in STRINGS:
        assert again.encode(s) == trained.encode(s)
    assert TextTokenizer.load(path).vocab_size == trained.vocab_size
    with pytest.raises(ValueError, match="already exists"):
        trained.save(tmp_path / "tok")
    other = TextTokenizer.train(world_captions(100), vocab_size=4300)
    other.save(tmp_path / "tok", overwrite=True)
    assert TextTokenizer.load(tmp_path / "tok").fingerprint == other.fingerprint != trained.fingerprint


def test_saved_official_copy_is_identical(tmp_path, ours, official):
    copy = TextTokenizer.load(ours.save(tmp_path))
    assert copy.fingerprint == ours.fingerprint
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == json.loads(OFFICIAL_FILE.read_text())
    for s in STRINGS[::5]:
        assert copy.encode(s) == official.encode(s).ids


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        TextTokenizer.load(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.load(tmp_path)
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="garbage.json.*not a HuggingFace tokenizers"):
        TextTokenizer.load(garbage)
    plain = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(ValueError, match=r"plain.json: not a 4M text tokenizer: missing special tokens \[PAD\]"):
        TextTokenizer.load(tmp_path / "plain.json")
    vocab = {t.content: i + 1 for i, t in enumerate(layout_tokens())} | {"[PAD]": 0, "[UNK]": 1, "x": 4205}
    shifted = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    shifted.save(str(tmp_path / "shifted.json"))
    with pytest.raises(ValueError, match=r"shifted.json: expected \[PAD\]=0"):
        TextTokenizer.load(tmp_path / "shifted.json")


def test_bad_ids_and_inputs(trained):
    with pytest.raises(ValueError, match="expects a str"):
        trained.encode(42)
    with pytest.raises(ValueError, match="expects strings"):
        trained.encode_batch(["a", None])
    with pytest.raises(ValueError, match=r"ids must be in 0\.\."):
        trained.decode([5, trained.vocab_size])
    with pytest.raises(ValueError, match=r"ids must be in 0\.\."):
        trained.decode_batch([[1], [-1]])


def _write_corpus(root: Path) -> list[str]:
    lines = world_captions(300, seed=5)
    (root / "a.txt").write_text("\n".join(lines[:100]) + "\n\n")
    (root / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines[100:150]) + "\n" + "\n".join(
        json.dumps({"caption": x, "other": 1}) for x in lines[150:200]))
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i, line in enumerate(lines[200:]):
            data = line.encode()
            info = tarfile.TarInfo(f"{i:06d}.caption.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{i:06d}.depth.npy")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"\x00\x01\x02"))
    (root / "ignored.png").write_bytes(b"\x89PNG")
    return lines


def test_iter_corpus_reads_txt_jsonl_and_shards(tmp_path):
    lines = _write_corpus(tmp_path)
    assert sorted(iter_corpus([tmp_path])) == sorted(lines)
    assert list(iter_corpus([tmp_path / "a.txt"])) == lines[:100]
    (tmp_path / "bad.jsonl").write_text('{"caption": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1 must be a JSON string"):
        list(iter_corpus([tmp_path / "bad.jsonl"]))
    with pytest.raises(ValueError, match="ignored.png is not one of"):
        list(iter_corpus([tmp_path / "ignored.png"]))
    with pytest.raises(FileNotFoundError, match="missing"):
        list(iter_corpus([tmp_path / "missing"]))


def test_cli_train_text(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    _write_corpus(tmp_path / "corpus")
    out = tmp_path / "tok"
    argv = ["tokenizer", "train-text", "--corpus", str(tmp_path / "corpus"), "--vocab-size", "4400",
            "--out", str(out), "--class-names", "sphere,cube, wine glass"]
    assert cli.main(argv) == 0
    tok = TextTokenizer.load(out)
    assert tok.class_names == ["sphere", "cube", "wine glass"]
    assert tok.unk_id not in tok.encode(world_captions(1, seed=5)[0])
    printed = capsys.readouterr().out
    assert str(out / "tokenizer.json") in printed and "300 lines" in printed
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(argv + ["--force"]) == 0
    assert cli.main(["tokenizer", "train-text", "--corpus", str(tmp_path / "none"), "--vocab-size", "5000",
                     "--out", str(out)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
