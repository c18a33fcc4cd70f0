"""`open4m tokenizer train / eval` in-process, with a tiny config."""

import yaml

from open4m.cli import main


def _tiny_yaml(path, modality="semseg"):
    path.write_text(yaml.safe_dump({
        "tokenizer": {"modality": modality, "image_size": 16, "patch_size": 4, "codebook_size": 32, "latent_dim": 8,
                      "channels": [8, 8, 16], "res_blocks": [0, 1, 1]},
        "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 2, "preview_every": 2, "threads": 1},
        "target": {"miou": ">= 0.95"},
    }))
    return path


def test_train_then_eval(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path / "semseg.yaml")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--modality", "semseg", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "preview.png").is_file()
    assert main(["tokenizer", "train", "--modality", "semseg", "--config", str(cfg), "--out", str(out),
                 "--resume"]) == 0  # already at its 3 steps: nothing more to do, no error
    capsys.readouterr()
    assert main(["tokenizer", "eval", "--tokenizer", str(out), "--data", "synthetic:1", "--num-samples", "6"]) == 0
    printed = capsys.readouterr().out
    assert "miou" in printed and "codebook_usage" in printed and "tok_semseg@16" in printed


def test_errors_are_one_clean_line(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path / "semseg.yaml")
    assert main(["tokenizer", "train", "--modality", "rgb", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert "is for modality 'semseg', not 'rgb'" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--modality", "semseg", "--config", str(cfg), "--data", "nowhere",
                 "--out", str(tmp_path / "x")]) == 2
    assert "not 'synthetic[:SEED]' and not a folder" in capsys.readouterr().err
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "missing config.json" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--modality", "semseg", "--config", str(tmp_path / "no.yaml"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no.yaml not found" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text(cfg.read_text().replace("steps: 3", "stepz: 3"))
    assert main(["tokenizer", "train", "--modality", "semseg", "--config", str(typo),
                 "--out", str(tmp_path / "x")]) == 2
    assert "train config: unknown keys ['stepz']" in capsys.readouterr().err
