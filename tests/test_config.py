"""mindppt.config: one parser per tool from shared option groups, mindcv's option names, YAML recipes as
defaults with the command line overriding them, and one-line user errors."""
import argparse
import glob
import os

import pytest

from mindppt.config import (
    ALL_OPTIONS,
    TOOLS,
    build_parser,
    default_config,
    load_config,
    options_table,
    parse_args,
    save_config,
    str2bool,
    tool_options,
    validate_config,
)
from mindppt.engine.build import model_kwargs
from mindppt.engine.cli import parse_cli
from mindppt.engine.schedule import resolve_lr
from mindppt.errors import ConfigError
from mindppt.models import eval_preprocessing, is_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
# The keys mindcv's config.py defines (mindspore-lab/mindcv, 2025), each accepted by a mindppt recipe.
MINDCV_KEYS = (
    "mode distribute val_while_train val_interval log_interval seed device_target dataset data_dir train_split "
    "val_split dataset_download num_parallel_workers shuffle num_samples batch_size drop_remainder image_resize "
    "scale ratio hflip vflip color_jitter interpolation auto_augment aug_splits re_prob re_scale re_ratio "
    "re_value re_max_attempts mean std crop_pct mixup cutmix cutmix_prob aug_repeats model num_classes "
    "in_channels drop_rate drop_path_rate pretrained ckpt_path resume_opt keep_checkpoint_max ckpt_save_dir "
    "ckpt_save_interval ckpt_save_policy epoch_size dataset_sink_mode ema ema_decay clip_grad clip_value "
    "layer_decay gradient_accumulation_steps opt momentum weight_decay use_nesterov weight_decay_filter eps "
    "scheduler lr min_lr warmup_epochs warmup_factor decay_epochs decay_rate multi_step_decay_milestones "
    "lr_epoch_stair num_cycles cycle_decay loss label_smoothing aux_factor reduction amp_level val_amp_level "
    "amp_cast_list loss_scale_type loss_scale drop_overflow_update eval_shuffle").split()


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(argv, tool="train"):
    with pytest.raises(ConfigError) as info:
        parse_args(argv, tool=tool)
    return info.value


def test_defaults_without_config():
    args = parse_args([], tool="train")
    assert args.opt == "adamw" and args.mode == "graph" and args.batch_size == 128
    assert args.scheduler == "cosine_decay" and args.weight_decay_filter == "norm_and_bias"
    assert args.r_tokens is None and args.threshold is None  # the model's own defaults apply
    assert args.image_resize is None and args.mean is None  # the model's preprocessing, resolved by the CLI
    assert set(default_config("train")) == set(vars(args)) - {"config", "command_line_options", "unused_options"}


def test_preprocessing_defaults_come_from_the_model_and_the_recipe_wins(tmp_path):
    args = parse_cli(["--model", "vit_small_patch16_224", "--ckpt_path", "w.ckpt"], tool="eval")
    expected = eval_preprocessing("vit_small_patch16_224")
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.mean == [127.5] * 3 and args.crop_pct == pytest.approx(0.9)  # AugReg: 0.5 mean/std, crop 0.9
    path = write(tmp_path, "model: deit_small_patch16_224\ncrop_pct: 1.0\n")
    args = parse_cli(["-c", path, "--image_resize", "160"], tool="eval")
    assert args.crop_pct == 1.0 and args.image_resize == 160
    assert args.interpolation == eval_preprocessing("deit_small_patch16_224")["interpolation"]


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    path = write(tmp_path, "batch_size: 64\nthreshold: 6e-5\nlr: 1.0e-3\npp_loc_list: [2, 4]\n"
                           "auto_augment: null\nmode: 1\n")
    args = parse_args(["-c", path])
    assert args.batch_size == 64
    assert args.threshold == pytest.approx(6e-5)  # PyYAML reads 6e-5 as a string; the type converts it
    assert args.eval_threshold == pytest.approx(6e-5)  # unset -> same as threshold
    assert args.pp_loc_list == [2, 4] and args.auto_augment is None and args.mode == "pynative"
    args = parse_args(["--config", path, "--batch_size", "8", "--pp_loc_list", "3,6,9", "--lr", "none",
                       "--mode", "graph"])
    assert args.batch_size == 8 and args.pp_loc_list == [3, 6, 9] and args.lr is None
    assert args.mode == "graph" and args.threshold == pytest.approx(6e-5)


def test_eval_takes_the_recipes_training_threshold_when_it_has_no_eval_threshold(tmp_path):
    path = write(tmp_path, "threshold: 6.0e-5\nlr: 1.0e-3\n")
    args = parse_args(["-c", path], tool="eval")
    assert args.eval_threshold == pytest.approx(6e-5) and not hasattr(args, "lr")
    assert parse_args(["-c", path, "--eval_threshold", "0"], tool="eval").eval_threshold == 0.0


def test_unknown_yaml_key_lists_close_matches_and_file(tmp_path):
    path = write(tmp_path, "batch_size: 64\nbach_size: 32\n")
    message = str(error_of(["-c", path]))
    assert path in message and "'bach_size'" in message and "did you mean" in message and "batch_size" in message
    with pytest.raises(ConfigError, match="neither mindppt nor mindcv"):
        validate_config({"zzzzzz": 1}, source="x.yaml")


def test_unknown_cli_option_lists_close_matches():
    error = error_of(["--bach_size", "64"])
    assert "unrecognized arguments" in str(error) and "--bach_size" in str(error)
    assert "--batch_size" in error.hint


def test_cli_does_not_accept_abbreviations():
    assert "--batch" in str(error_of(["--batch", "64"]))


@pytest.mark.parametrize("tool, flag, takers", [
    ("eval", "--lr", "tools/train.py"),
    ("eval", "--mixup", "tools/train.py"),
    ("export", "--metrics_out", "tools/eval.py"),
    ("train", "--metrics_out", "tools/eval.py"),
    ("predict", "--val_split", None),  # recipe-only for predict
])
def test_a_flag_of_another_tool_names_that_tool(tool, flag, takers):
    error = error_of([flag, "1"], tool=tool)
    assert "unrecognized arguments" in str(error) and flag in str(error)
    if takers:
        assert takers in error.hint and f"not tools/{tool}.py" in error.hint
    else:
        assert "from its recipe only" in error.hint


def test_the_demo_fixes_its_model():
    error = error_of(["--model", "deit_tiny_patch16_224"], tool="demo")
    assert "tools/demo.py takes model from its recipe only" in error.hint
    assert error_of(["--eval_threshold", "0"], tool="sweep").hint.endswith("use --thresholds")


def test_wrong_type_in_yaml_names_key_value_and_type(tmp_path):
    path = write(tmp_path, 'batch_size: "abc"\n')
    message = str(error_of(["-c", path]))
    assert "batch_size" in message and "'abc'" in message and "int" in message and path in message


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
    ("scheduler: cosine\n", "cosine_decay"),
    ("weight_decay_filter: true\n", "norm_and_bias"),
    ("re_value: blue\n", "'random', an int"),
    ("dataset_sink_mode: sometimes\n", "boolean"),  # mindcv keys are type-checked too
])
def test_wrong_values_in_yaml(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), source=path)
    assert expected in str(info.value), str(info.value)


def test_wrong_type_on_cli():
    message = str(error_of(["--batch_size", "abc"]))
    assert "--batch_size" in message and "abc" in message and "int" in message


def test_config_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert "not found" in str(error_of(["-c", missing])) and missing in str(error_of(["-c", missing]))
    path = write(tmp_path, "batch_size: 64\nscale: [0.08, 1.0\nlr: 1.0\n")
    message = str(error_of(["-c", path]))
    assert path in message and "invalid YAML" in message and "line 2" in message  # where the list opens
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(write(tmp_path, "batch_size: 64\n  lr: 1.0\n", "indent.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- batch_size\n- 64\n", "list.yaml"))
    with pytest.raises(ConfigError, match="line 3.*duplicate key 'lr'"):
        load_config(write(tmp_path, "lr: 1.0e-3\nbatch_size: 8\nlr: 1.0e-4\n", "dup.yaml"))
    with pytest.raises(ConfigError, match="'config' cannot be set"):
        validate_config({"config": "other.yaml"})
    assert parse_args(["-c", write(tmp_path, "# only a comment\n", "empty.yaml")]).batch_size == 128


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


def test_bool_options_on_cli_and_yaml(tmp_path):
    assert parse_args(["--distribute", "True"]).distribute is True
    assert parse_args(["--distribute", "0"]).distribute is False
    assert parse_args(["--ema"]).ema is True  # flag alone means true
    assert parse_args(["--ema", "--distribute", "false"]).ema is True
    path = write(tmp_path, "distribute: 'yes'\nema: true\nclip_grad: 1\n")
    args = parse_args(["-c", path])
    assert args.distribute is True and args.ema is True and args.clip_grad is True
    assert parse_args(["-c", path, "--ema", "false"]).ema is False
    assert "boolean" in str(error_of(["--distribute", "perhaps"]))


def test_lists_and_choices():
    assert parse_args(["--r_tokens", "50"]).r_tokens == 50
    assert parse_args(["--r_tokens", "0,0,0,50,0,0,50,0,0,50,0,0"]).r_tokens[3] == 50
    assert parse_args(["--r_tokens", "[8, 8]"]).r_tokens == [8, 8]
    args = parse_args(["--scale", "0.5,1.0", "--mean", "127,127,127", "--betas", "0.9,0.95", "--re_value", "0"])
    assert args.scale == [0.5, 1.0] and args.mean == [127.0] * 3 and args.betas == [0.9, 0.95] and args.re_value == 0
    assert parse_args(["--device_target", "ascend", "--jit_level", "o2"]).device_target == "Ascend"
    assert parse_args(["--mode", "1"]).mode == "pynative"  # mindcv's 0/1 = GRAPH_MODE/PYNATIVE_MODE


def test_cross_option_checks(tmp_path):
    assert "warmup_epochs" in str(error_of(["--epoch_size", "3", "--warmup_epochs", "5"]))
    assert "lr_per_512" in str(error_of(["--lr", "none", "--lr_per_512", "none"]))
    assert "decay_epochs" in str(error_of(["--epoch_size", "10", "--warmup_epochs", "2", "--decay_epochs", "9"]))
    assert "val_while_train" in str(error_of(["--ckpt_save_policy", "top_k", "--val_while_train", "false"]))
    assert "set ckpt_path" in str(error_of(["--resume_opt", "true"]))
    assert "3 channels" in str(error_of(["--in_channels", "1"]))


def test_mindcv_keys_are_all_accepted_and_the_unused_ones_are_reported(tmp_path):
    recipe = {"dataset_sink_mode": True, "dataset_download": False, "eval_shuffle": False, "aug_splits": 0,
              "aux_factor": 0.0, "reduction": "mean", "layer_decay": None, "gradient_accumulation_steps": 1,
              "num_cycles": 1, "cycle_decay": 1.0, "decay_rate": 0.9, "multi_step_decay_milestones": [30, 60],
              "amp_cast_list": None, "num_samples": None}
    path = write(tmp_path, "\n".join(f"{k}: {'null' if v is None else v}" for k, v in recipe.items()) + "\n")
    args = parse_args(["-c", path], tool="train")
    unused = dict(args.unused_options)
    assert set(unused) == set(recipe)
    assert "host" in unused["dataset_sink_mode"] and "step" in unused["decay_rate"]
    # the evaluation tools report only what an evaluation would have read
    assert {k for k, _ in parse_args(["-c", path], tool="eval").unused_options} == {"dataset_download",
                                                                                    "eval_shuffle"}
    for key in MINDCV_KEYS:  # every mindcv key is an option here or a reported mindcv key
        assert key in ALL_OPTIONS or key in recipe, key


@pytest.mark.parametrize("text, needle", [
    ("aug_splits: 3\n", "AugMix"),
    ("gradient_accumulation_steps: 4\n", "accumulation"),
    ("layer_decay: 0.75\n", "layer-wise"),
    ("reduction: sum\n", "batch mean"),
    ("num_samples: 100\n", "subsampling"),
])
def test_mindcv_values_that_ask_for_what_mindppt_does_not_do_are_errors(tmp_path, text, needle):
    message = str(error_of(["-c", write(tmp_path, text)]))
    assert "not supported" in message and needle in message


def test_resolve_lr_linear_scaling():
    args = parse_args(["--lr_per_512", "1e-5", "--batch_size", "128"])
    assert resolve_lr(args, device_num=8) == pytest.approx(2e-5)
    assert resolve_lr(args) == pytest.approx(2.5e-6)
    args = parse_args(["--lr", "3e-4"])  # lr_per_512 keeps its default
    assert resolve_lr(args, device_num=8) == pytest.approx(3e-4)  # absolute lr wins


def test_model_kwargs_omit_unset_ppt_options_and_use_eval_threshold():
    args = parse_cli(["--model", "deit_small_patch16_224"], tool="train")
    kwargs = model_kwargs(args)
    assert "r_tokens" not in kwargs and "threshold" not in kwargs and kwargs["img_size"] == 224
    args = parse_cli(["--threshold", "6e-5", "--eval_threshold", "7e-5", "--r_tokens", "50"], tool="train")
    assert model_kwargs(args)["threshold"] == pytest.approx(6e-5)
    assert model_kwargs(args, for_eval=True)["threshold"] == pytest.approx(7e-5)
    args = parse_cli(["--ckpt_path", "w.ckpt"], tool="train")
    assert model_kwargs(args)["checkpoint_path"] == "w.ckpt"  # mindcv: ckpt_path initialises training
    args = parse_cli(["--ckpt_path", "w.ckpt", "--resume_opt", "true"], tool="train")
    assert model_kwargs(args)["checkpoint_path"] == ""  # the trainer restores the whole training state


def test_save_config_round_trip(tmp_path):
    path = write(tmp_path, "batch_size: 64\nthreshold: 6e-5\nr_tokens: [1, 2]\n")
    args = parse_args(["-c", path, "--lr", "1e-4", "--auto_augment", "none"])
    out = tmp_path / "run" / "config.yaml"
    save_config(args, out)
    assert os.listdir(out.parent) == ["config.yaml"]  # no temp file left behind
    again = parse_args(["-c", str(out)])
    mine, theirs = vars(args), vars(again)
    for key in ("config", "command_line_options"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))), ids=os.path.basename)
def test_shipped_configs_parse_for_every_tool(path):
    for tool in TOOLS:
        args = parse_args(["-c", path], tool=tool)
        assert args.model and args.unused_options == []
    args = parse_args(["-c", path], tool="train")
    assert args.epoch_size >= 1 and resolve_lr(args, device_num=8) > 0
    assert set(load_config(path)) <= set(ALL_OPTIONS)  # the shipped recipes use no mindcv-only key


def test_ppt_recipe_values():
    args = parse_args(["-c", os.path.join(CONFIGS, "ppt_deit_s.yaml")])
    assert args.model == "ppt_deit_small_patch16_224" and args.epoch_size == 30
    assert args.threshold == pytest.approx(6e-5) and args.eval_threshold == pytest.approx(7e-5)
    assert args.r_tokens == 50 and args.pp_loc_list == [3, 6, 9]
    assert args.lr is None and args.lr_per_512 == pytest.approx(1e-5)
    assert (args.mixup, args.cutmix, args.mixup_switch_prob, args.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert args.aug_repeats == 3 and args.mean == pytest.approx([123.675, 116.28, 103.53])


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
    assert differ == {"config", "model", "ckpt_path", "ckpt_save_dir", "distillation_type", "teacher_model",
                      "teacher_checkpoint"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_each_tools_help_lists_what_it_reads_and_nothing_else(tool, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser(tool).parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    reads = set(tool_options(tool))
    for name in ALL_OPTIONS:
        assert (f"--{name} " in out or f"--{name}\n" in out) == (name in reads), (tool, name)
    if tool == "eval":
        assert len(out.splitlines()) <= 60  # one screen


def test_readme_has_the_configuration_table():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        assert options_table() in handle.read()  # regenerate the README table from config.options_table()
