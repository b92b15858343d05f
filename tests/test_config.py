"""mindppt.config: YAML recipes as argparse defaults, CLI overrides, and clear user errors."""
import argparse
import glob
import os

import pytest

from mindppt.config import (
    build_parser,
    default_config,
    given_options,
    load_config,
    parse_args,
    save_config,
    str2bool,
    validate_config,
)
from mindppt.engine.build import model_kwargs
from mindppt.engine.schedule import resolve_lr
from mindppt.errors import ConfigError
from mindppt.models import is_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def exit_message(capsys, argv):
    """Run parse_args expecting a usage error; return stderr."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_defaults_without_config():
    args = parse_args([])
    assert args.opt == "adamw" and args.mode == "graph" and args.batch_size == 128
    assert args.img_size == args.image_size  # "none = image_size" is resolved
    assert args.r_tokens is None and args.threshold is None  # the model's own defaults apply
    assert set(default_config()) == set(vars(args)) - {"config"}


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    path = write(tmp_path, "batch_size: 64\nthreshold: 6e-5\nlr: 1.0e-3\npp_loc_list: [2, 4]\n"
                           "auto_augment: null\nmode: pynative\n")
    args = parse_args(["-c", path])
    assert args.batch_size == 64
    assert args.threshold == pytest.approx(6e-5)  # PyYAML reads 6e-5 as a string; the type converts it
    assert args.eval_threshold == pytest.approx(6e-5)  # unset -> same as threshold
    assert args.pp_loc_list == [2, 4] and args.auto_augment is None and args.mode == "pynative"
    args = parse_args(["--config", path, "--batch_size", "8", "--pp_loc_list", "3,6,9", "--lr", "none",
                       "--mode", "graph"])
    assert args.batch_size == 8 and args.pp_loc_list == [3, 6, 9] and args.lr is None
    assert args.mode == "graph" and args.threshold == pytest.approx(6e-5)


def test_unknown_yaml_key_lists_close_matches_and_file(tmp_path, capsys):
    path = write(tmp_path, "batch_size: 64\nbach_size: 32\n")
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), source=path)
    msg = str(info.value)
    assert path in msg and "'bach_size'" in msg and "batch_size" in msg
    err = exit_message(capsys, ["-c", path])
    assert path in err and "bach_size" in err and "did you mean" in err and "batch_size" in err


def test_unknown_yaml_key_without_close_match(tmp_path):
    path = write(tmp_path, "zzzzzz: 1\n")
    with pytest.raises(ConfigError, match="no similar option"):
        validate_config(load_config(path), source=path)


def test_unknown_cli_option_lists_close_matches(capsys):
    err = exit_message(capsys, ["--bach_size", "64"])
    assert "unrecognized arguments" in err and "--bach_size" in err and "--batch_size" in err


def test_cli_does_not_accept_abbreviations(capsys):
    err = exit_message(capsys, ["--batch", "64"])
    assert "--batch_size" in err


def test_wrong_type_in_yaml_names_key_value_and_type(tmp_path, capsys):
    path = write(tmp_path, 'batch_size: "abc"\n')
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), source=path)
    msg = str(info.value)
    assert "batch_size" in msg and "'abc'" in msg and "int" in msg and path in msg
    err = exit_message(capsys, ["-c", path])
    assert "batch_size" in err and "abc" in err and "int" in err


@pytest.mark.parametrize("text, expected", [
    ("batch_size: true\n", "int"),          # a YAML bool is not an int
    ("batch_size: 0\n", "in [1"),           # range
    ("hflip: 1.5\n", "in [0.0, 1.0]"),
    ("scale: [0.08]\n", "list of 2"),
    ("pp_loc_list: [3, x]\n", "int"),
    ("pp_loc_list: [3, 3]\n", "distinct"),
    ("device_target: TPU\n", "CPU, GPU, Ascend"),
    ("mean: {a: 1}\n", "list"),
    ("model: [a, b]\n", "string"),
    ("distribute: maybe\n", "boolean"),
    ("distillation_type: soft\n", "none, hard"),
    ("distillation_alpha: 1.5\n", "in [0.0, 1.0]"),
])
def test_wrong_values_in_yaml(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), source=path)
    assert expected in str(info.value), str(info.value)


def test_wrong_type_on_cli(capsys):
    err = exit_message(capsys, ["--batch_size", "abc"])
    assert "--batch_size" in err and "abc" in err and "int" in err


def test_missing_config_file(tmp_path, capsys):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(path)
    assert path in exit_message(capsys, ["-c", path])


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = write(tmp_path, "batch_size: 64\nscale: [0.08, 1.0\nlr: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert path in msg and "line" in msg and "invalid YAML" in msg
    assert "line 2" in msg  # where the unclosed list starts
    err = exit_message(capsys, ["-c", path])
    assert path in err and "line" in err


def test_yaml_bad_indentation_line(tmp_path):
    path = write(tmp_path, "batch_size: 64\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path, capsys):
    path = write(tmp_path, "- batch_size\n- 64\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    assert "mapping" in exit_message(capsys, ["-c", path])


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "lr: 1.0e-3\nbatch_size: 8\nlr: 1.0e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "duplicate key 'lr'" in str(info.value) and "line 3" in str(info.value)


def test_empty_yaml_is_an_empty_config(tmp_path):
    path = write(tmp_path, "# only a comment\n")
    assert load_config(path) == {}
    assert parse_args(["-c", path]).batch_size == 128


def test_config_key_inside_yaml_is_rejected(tmp_path):
    path = write(tmp_path, "config: other.yaml\n")
    with pytest.raises(ConfigError, match="'config' cannot be set"):
        validate_config(load_config(path), source=path)


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("ON", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
])
def test_str2bool(text, value):
    assert str2bool(text) is value


@pytest.mark.parametrize("bad", ["maybe", "2", "", 2, 0.5, None, [1]])
def test_str2bool_rejects(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="boolean"):
        str2bool(bad)


def test_bool_options_on_cli_and_yaml(tmp_path, capsys):
    assert parse_args(["--distribute", "True"]).distribute is True
    assert parse_args(["--distribute", "0"]).distribute is False
    assert parse_args(["--ema"]).ema is True  # flag alone means true
    assert parse_args(["--ema", "--distribute", "false"]).ema is True
    path = write(tmp_path, "distribute: 'yes'\nema: true\nrepeated_aug: 0\n")
    args = parse_args(["-c", path])
    assert args.distribute is True and args.ema is True and args.repeated_aug is False
    assert parse_args(["-c", path, "--ema", "false"]).ema is False
    err = exit_message(capsys, ["--distribute", "perhaps"])
    assert "--distribute" in err and "boolean" in err


def test_r_tokens_int_or_list_and_lists():
    assert parse_args(["--r_tokens", "50"]).r_tokens == 50
    assert parse_args(["--r_tokens", "0,0,0,50,0,0,50,0,0,50,0,0"]).r_tokens[3] == 50
    assert parse_args(["--r_tokens", "[8, 8]"]).r_tokens == [8, 8]
    args = parse_args(["--scale", "0.5,1.0", "--mean", "0.5,0.5,0.5", "--betas", "0.9,0.95"])
    assert args.scale == [0.5, 1.0] and args.mean == [0.5] * 3 and args.betas == [0.9, 0.95]
    assert parse_args(["--device_target", "ascend", "--jit_level", "o2"]).device_target == "Ascend"
    assert parse_args(["--mode", "1"]).mode == "pynative"  # MindSpore's PYNATIVE_MODE


def test_cross_option_checks(capsys):
    assert "warmup_epochs" in exit_message(capsys, ["--epoch_size", "3", "--warmup_epochs", "5"])
    assert "lr_per_512" in exit_message(capsys, ["--lr", "none", "--lr_per_512", "none"])


def test_resolve_lr_linear_scaling():
    args = parse_args(["--lr_per_512", "1e-5", "--batch_size", "128"])
    assert resolve_lr(args, device_num=8) == pytest.approx(2e-5)
    assert resolve_lr(args) == pytest.approx(2.5e-6)
    args = parse_args(["--lr", "3e-4"])  # lr_per_512 keeps its default
    assert resolve_lr(args, device_num=8) == pytest.approx(3e-4)  # absolute lr wins


def test_model_kwargs_omit_unset_ppt_options_and_use_eval_threshold():
    args = parse_args(["--model", "deit_small_patch16_224"])
    kwargs = model_kwargs(args)
    assert "r_tokens" not in kwargs and "threshold" not in kwargs and kwargs["img_size"] == 224
    args = parse_args(["--threshold", "6e-5", "--eval_threshold", "7e-5", "--r_tokens", "50"])
    assert model_kwargs(args)["threshold"] == pytest.approx(6e-5)
    assert model_kwargs(args, for_eval=True)["threshold"] == pytest.approx(7e-5)


def test_save_config_round_trip(tmp_path):
    path = write(tmp_path, "batch_size: 64\nthreshold: 6e-5\nr_tokens: [1, 2]\n")
    args = parse_args(["-c", path, "--lr", "1e-4", "--auto_augment", "none"])
    out = tmp_path / "run" / "config.yaml"
    save_config(args, out)
    assert os.listdir(out.parent) == ["config.yaml"]  # no temp file left behind
    again = parse_args(["-c", str(out)])
    mine, theirs = vars(args), vars(again)
    mine.pop("config"), theirs.pop("config")
    assert mine == theirs


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))),
                         ids=os.path.basename)
def test_shipped_configs_parse(path):
    args = parse_args(["-c", path])
    assert args.model and args.epoch_size >= 1
    assert resolve_lr(args, device_num=8) > 0


def test_expected_configs_are_shipped():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))}
    assert {"ppt_deit_t.yaml", "ppt_deit_s.yaml", "ppt_deit_b.yaml", "deit_s.yaml",
            "demo_digits.yaml"} <= names


def test_ppt_recipe_values():
    args = parse_args(["-c", os.path.join(CONFIGS, "ppt_deit_s.yaml")])
    assert args.model == "ppt_deit_small_patch16_224" and args.epoch_size == 30
    assert args.threshold == pytest.approx(6e-5) and args.eval_threshold == pytest.approx(7e-5)
    assert args.r_tokens == 50 and args.pp_loc_list == [3, 6, 9]
    assert args.lr is None and args.lr_per_512 == pytest.approx(1e-5)
    assert (args.mixup, args.cutmix, args.mixup_switch_prob, args.label_smoothing) == (0.8, 1.0, 0.5, 0.1)


@pytest.mark.parametrize("size, student", [("s", "small"), ("t", "tiny")])
def test_distilled_recipe_values(size, student):
    """The distilled PPT recipes: the distilled DeiT with hard distillation from a registered teacher
    (DeiT's RegNetY-160 is not provided), the PPT fine-tuning values of ppt_deit_<size>.yaml otherwise."""
    path = os.path.join(CONFIGS, f"ppt_deit_{size}_distilled.yaml")
    args = parse_args(["-c", path])
    plain = parse_args(["-c", os.path.join(CONFIGS, f"ppt_deit_{size}.yaml")])
    assert args.model == f"ppt_deit_{student}_distilled_patch16_224" and is_model(args.model)
    assert args.distillation_type == "hard" and args.distillation_alpha == 0.5
    assert is_model(args.teacher_model) and args.teacher_checkpoint
    text = open(path, encoding="utf-8").read()
    assert "RegNetY-160" in text and "not provided" in text
    differ = {k for k in vars(args) if getattr(args, k) != getattr(plain, k)}
    assert differ == {"config", "model", "checkpoint_path", "output_dir", "distillation_type", "teacher_model",
                      "teacher_checkpoint"}


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("--batch_size", "--lr_per_512", "--pp_loc_list", "--metrics_out"):
        assert name in out


@pytest.mark.parametrize("tool, argv, needle", [
    ("eval", ["--threshold", "0"], None),  # no eval_threshold anywhere: --threshold is the eval threshold
    ("eval", ["--eval_threshold", "0", "--threshold", "0"], "--threshold is a training option"),
    ("eval", ["--drop_path_rate", "0.2"], "--drop_path_rate is a training option"),
    ("eval", ["--distribute", "true"], "--distribute is a training option"),
    ("eval", ["--ckpt_path", "a.ckpt", "--checkpoint_path", "b.ckpt"], "tools/eval.py loads ckpt_path"),
    ("train", ["--metrics_out", "m.json"], "--metrics_out is an option of tools/eval.py"),
    ("train", ["--ckpt_path", "a.ckpt"], "use --checkpoint_path"),
    ("demo", ["--model", "deit_tiny_patch16_224"], "--model is set by the demo itself"),
    ("demo", ["--epoch_size", "30", "--threshold", "1e-3"], None),
    (None, ["--lr", "1e-3", "--lr_per_512", "1e-3"], "--lr_per_512 has no effect: lr is set"),
    (None, ["--auto_augment", "rand-m9", "--color_jitter", "0.3"], "--color_jitter has no effect"),
    (None, ["--auto_augment", "none", "--color_jitter", "0.3"], None),
    (None, ["--loss_scale", "512"], "--loss_scale has no effect"),
    (None, ["--loss_scale_type", "fixed", "--loss_scale", "512"], None),
    (None, ["--ema_decay", "0.9"], "--ema_decay has no effect: ema is off"),
    (None, ["--momentum", "0.8"], "--momentum has no effect: opt is adamw"),
    (None, ["--opt", "sgd", "--betas", "0.9,0.99"], "--betas has no effect: opt is sgd"),
    (None, ["--mixup", "0", "--mixup_switch_prob", "0.3"], "--mixup_switch_prob has no effect"),
    (None, ["--mixup", "0", "--cutmix", "0", "--mixup_prob", "0.3"], "--mixup_prob has no effect"),
    (None, ["--warmup_epochs", "0", "--warmup_lr", "1e-6"], "--warmup_lr has no effect"),
    (None, ["--scheduler", "constant", "--min_lr", "0"], "--min_lr has no effect"),
    (None, ["--mode", "pynative", "--jit_level", "O1"], "--jit_level has no effect"),
    ("train", ["--distribute", "true", "--device_id", "1"], "--device_id has no effect"),
    (None, ["--r_tokens", "0", "--threshold", "1e-4"], "--threshold has no effect: r_tokens is 0"),
    (None, ["--r_tokens", "0,0,0,0,0,0,0,0,0,0,0,0", "--pp_loc_list", "1"], "--pp_loc_list has no effect"),
    ("train", ["--teacher_model", "deit_base_patch16_224"],
     "--teacher_model has no effect: distillation_type is none; pass --distillation_type hard"),
    ("train", ["--teacher_checkpoint", "t.ckpt"], "--teacher_checkpoint has no effect: distillation_type is none"),
    ("train", ["--distillation_alpha", "0.3"], "--distillation_alpha has no effect: distillation_type is none"),
    ("train", ["--distillation_type", "hard", "--teacher_model", "deit_base_patch16_224", "--teacher_checkpoint",
               "t.ckpt", "--distillation_alpha", "0.3"], None),
    ("eval", ["--distillation_type", "hard"], "--distillation_type is a training option that tools/eval.py"),
    ("sweep", ["--teacher_checkpoint", "t.ckpt"], "--teacher_checkpoint is a training option"),
    ("export", ["--distillation_alpha", "0.3"], "--distillation_alpha is a training option"),
    ("demo", ["--distillation_type", "hard"], "--distillation_type does not apply to the demo"),
])
def test_command_line_options_that_would_do_nothing_are_refused(tool, argv, needle, capsys):
    if needle is None:
        parse_args(argv, tool=tool)
        return
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, tool=tool)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_recipe_values_may_be_shadowed_only_the_command_line_is_checked(tmp_path):
    """A YAML recipe is shared by training and evaluation: its train-only or shadowed keys are fine."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1.0e-3\nlr_per_512: 5.0e-4\nthreshold: 6.0e-5\neval_threshold: 7.0e-5\n"
                      "loss_scale_type: none\nloss_scale: 512\n")
    args = parse_args(["-c", str(recipe), "--eval_threshold", "0"], tool="eval")
    assert args.eval_threshold == 0.0 and args.threshold == 6e-5
    assert given_options(["-c", str(recipe), "--eval_threshold=0", "--lr", "1"]) == ["eval_threshold", "lr"]
