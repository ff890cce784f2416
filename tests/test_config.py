"""Typed config: YAML + KEY=VALUE overrides, with errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from birddet.cli import main
from birddet.config import Config, config_to_dict, load_config, save_config
from birddet.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 1e-4\n  epochs: 3\nmodel:\n  image_size: 512\n")
    cfg = load_config(path, ["train.lr=2e-4", "data.train.ann=/data/train.json", "model.backbone.weights=null"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(2e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.model.image_size == 512
    assert cfg.data.train.ann == "/data/train.json"
    assert cfg.model.backbone.weights is None
    assert cfg.model.rpn.anchor_sizes == [32, 64, 128, 256, 512], "defaults fill what the file omits"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert "train.learning_rate" in str(err.value) and str(path) in str(err.value)
    assert "lr" in str(err.value), "lists the valid keys"


def test_unknown_override_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"model\.backbone\.wieghts"):
        load_config(None, ["model.backbone.wieghts=x.pt"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=many", "'train.epochs' must be int"),
        ("train.amp=fp8", "'train.amp' must be one of"),
        ("model.rpn.anchor_sizes=32", "'model.rpn.anchor_sizes' must be a list"),
        ("train.lr", "must look like KEY=VALUE"),
        ("train.epochs=true", "'train.epochs' must be int"),
    ],
)
def test_wrongly_typed_overrides_are_refused(override: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.lr=3e-4", "model.roi_heads.box_head=4conv1fc"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load(path.read_text())["model"]["roi_heads"]["box_head"] == "4conv1fc"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    """`species_*.yaml` are `birddet train-classifier` configs; the others are detector configs."""
    from birddet.config import ClassifierConfig, Config

    load_config(REPO / "configs" / name, schema=ClassifierConfig if name.startswith("species_") else Config)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "trian:\n  lr: 0.1\n")
    code = main(["train", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("birddet: error:") and "trian" in err and len(err.splitlines()) == 1


def test_cli_stopped_run_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import birddet.engine.trainer as trainer

    def explode(*args: object, **kwargs: object) -> None:
        raise trainer.NonFiniteLossError("loss_box_reg is nan at step 12;\nlower train.lr or set train.grad_clip")

    monkeypatch.setattr(trainer, "train", explode)
    code = main(["train", str(REPO / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("birddet: stopped:") and "step 12" in err and len(err.splitlines()) == 1


def test_overrides_may_stand_before_or_after_out_and_resume() -> None:
    from birddet.cli import _parse, build_parser

    parser = build_parser()
    args = _parse(parser, ["train", "cfg.yaml", "train.lr=1e-4", "--out", "run", "train.epochs=3", "--resume", "a.b=1"])
    assert args.overrides == ["train.lr=1e-4", "train.epochs=3", "a.b=1"]
    assert args.out == "run" and args.resume
    with pytest.raises(SystemExit):
        _parse(parser, ["train", "cfg.yaml", "--out", "run", "stray"])
