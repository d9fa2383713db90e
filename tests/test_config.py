"""Config composition with Hydra's compose API and the validated dataclass."""
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import train_gpt as tg

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "data", "budget", "export"])
def test_every_group_option_composes(group):
    assert options(group)
    for option in options(group):
        cfg = tg.load_config([f"{group}={option}"])
        assert isinstance(cfg, tg.Config) and set(cfg.model.layout) <= {"G", "A"}


def test_override_reaches_the_dataclass():
    cfg = tg.load_config(["model=attention", "train.max_wallclock_seconds=300", "eval.modes=[plain,stateful]"])
    assert cfg.model.layout == "A" * 10 and cfg.train.max_wallclock_seconds == 300.0
    assert cfg.eval.modes == ["plain", "stateful"]


def test_misspelled_key_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        tg.load_config(["train.max_wallclok_seconds=300"])
    assert "max_wallclok_seconds" in str(err.value) and "max_wallclock_seconds" in str(err.value)
    with pytest.raises(ValueError, match="valid keys under 'model.'"):
        tg.config_from_dict(tg.Config, {"model": {"layuot": "GA"}})


@pytest.mark.parametrize("override,message", [("model.kernel=triton", "model.kernel"),
                                              ("model.layout=GGXA", "model.layout"),
                                              ("eval.modes=[plain,fancy]", "eval.modes"),
                                              ("train.global_batch_tokens=1000", "global_batch_tokens")])
def test_bad_values_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        tg.load_config([override])


def numeric_keys():
    cfg = tg.Config()
    return [f"{sec}.{f.name}" for sec in ("model", "train", "eval", "export") for f in tg.dataclasses.fields(getattr(cfg, sec))
            if type(getattr(getattr(cfg, sec), f.name)) in (int, float)]


def test_numbers_out_of_range_are_rejected_naming_key_and_range():
    """Every numeric key has a range: > 0, in [0, 1), in [0, 1], in 2..8 or (all others but the seed) >= 0. The value just
    outside it is an error naming the key and the range; the value at its edge and every default are accepted."""
    rules = tg.RANGES
    assert set(rules) < set(numeric_keys())  # no rule names a key that does not exist
    for key in ("model.chunk_size", "model.gdn_heads", "train.seq_len", "train.micro_batch_seqs",
                "train.log_every", "eval.batch_seqs", "export.gptq_block"):  # zero would divide by zero or build nothing
        assert rules[key] == "> 0", key
    assert "model.conv_size" not in rules  # ">= 0": 0 is the GDN layer without a short conv
    assert rules["export.matrix_bits"] == rules["export.embed_bits"] == "in 2..8"  # 9+ bits overflow the uint8 packing
    outside = {"> 0": 0, "in [0, 1)": 1, "in [0, 1]": 1.5, "in 2..8": 9, ">= 0": -1}
    edge = {"> 0": 1, "in [0, 1)": 0, "in [0, 1]": 1, "in 2..8": 2, ">= 0": 0}
    checked = 0
    for key in numeric_keys():
        if key == "train.seed":
            assert tg.config_from_dict(tg.Config, {"train": {"seed": -5}}).train.seed == -5
            continue
        section, name = key.split(".")
        rule = rules.get(key, ">= 0")
        with pytest.raises(ValueError, match=f"config {key}: .* must be {re.escape(rule)}$"):
            tg.config_from_dict(tg.Config, {section: {name: outside[rule]}})
        tg.config_from_dict(tg.Config, {section: {name: edge[rule]}})
        checked += 1
    assert checked == len(numeric_keys()) - 1 >= 40
    assert tg.config_from_dict(tg.Config, tg.dataclasses.asdict(tg.Config())) == tg.Config()  # every default in range
    with pytest.raises(ValueError, match="config export.matrix_bits: 1 must be in 2..8"):
        tg.load_config(["export.matrix_bits=1"])  # through Hydra's overrides too
    with pytest.raises(ValueError, match="config train.seq_len: 0 must be > 0"):
        tg.load_config(["train.seq_len=0"])  # was a ZeroDivisionError


def test_wrong_type_is_rejected():
    with pytest.raises(ValueError, match="train.seq_len: expected int"):
        tg.config_from_dict(tg.Config, {"train": {"seq_len": "long"}})


def test_resolved_config_file_round_trips(tmp_path):
    cfg = tg.load_config(["model=pure_gdn", "train.seed=7"])
    path = tmp_path / "resolved.yaml"
    OmegaConf.save(OmegaConf.create(tg.dataclasses.asdict(cfg)), path)
    again = tg.load_config(["--config", str(path), "train.seed=8"])
    assert again.model == cfg.model and again.train.seed == 8
    with pytest.raises(ValueError, match="unknown config key"):
        tg.load_config(["--config", str(path), "train.sed=8"])


@pytest.mark.parametrize("overrides,message", [
    (["export=int6", "export.compressors=[]"], "config export.compressors: empty"),  # crashed after training
    (["export=int6", "train.max_wallclock_seconds=10"], "config train.max_wallclock_seconds: 10.0 leaves no training time"),
    (["train.max_wallclock_seconds=0"], "config train.max_wallclock_seconds: 0.0 must be > 0"),
    (["model.gdn_v_heads=12"], "config model.gdn_v_heads: 12 must be 0 (= gdn_heads) or a multiple of model.gdn_heads (8)"),
    (["model.gdn_v_heads=-8"], "config model.gdn_v_heads: -8 must be >= 0")])
def test_configs_that_cannot_run_are_rejected_before_training(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tg.load_config(overrides)
    assert tg.load_config(["export=int6", "train.max_wallclock_seconds=13"])  # 1 s after the 12 s reserve is a budget
    assert tg.training_budget(tg.load_config(["export=int6", "train.max_wallclock_seconds=13"])) == 1.0
    assert tg.training_budget(tg.load_config(["export=int6", "export.calib_source=self", "train.max_wallclock_seconds=10"])) == 10.0


def test_errors_in_a_config_file_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    OmegaConf.save(OmegaConf.create({**tg.dataclasses.asdict(tg.Config()), "train": {"seq_len": 0}}), path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: config train.seq_len: 0 must be > 0$"):
        tg.load_config(["--config", str(path)])
    OmegaConf.save(OmegaConf.create(tg.dataclasses.asdict(tg.Config())), path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} \\+ overrides: config model.kernel"):
        tg.load_config(["--config", str(path), "model.kernel=cuda"])


def test_fla_kernel_on_hopper_refuses_a_triton_that_gets_fla_gate_gradients_wrong(monkeypatch):
    """FLA's own backward wrappers refuse Triton 3.4-3.7.0 on Hopper (wrong gate gradients, FLA #640); the GVA backward
    launches FLA's kernels without those wrappers, so the trainer checks it itself, before any step."""
    fla_utils = pytest.importorskip("fla.utils")
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(fla_utils, "IS_NVIDIA_HOPPER", True)
    monkeypatch.setattr(fla_utils, "TRITON_ABOVE_3_4_0", True)
    monkeypatch.setattr(fla_utils, "TRITON_ABOVE_3_7_1", True)
    assert tg.resolve_kernel("fla", cuda) == "fla"
    monkeypatch.setattr(fla_utils, "TRITON_ABOVE_3_7_1", False)
    with pytest.raises(RuntimeError, match=r"model.kernel=auto: Triton .* on Hopper .* \(FLA #640\): use >= 3\.7\.1"):
        tg.resolve_kernel("auto", cuda)
    monkeypatch.setattr(fla_utils, "IS_NVIDIA_HOPPER", False)  # other GPUs: FLA does not refuse them
    assert tg.resolve_kernel("fla", cuda) == "fla"
