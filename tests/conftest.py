"""Shared test setup: repo root importable, MindSpore on the CPU backend in GRAPH_MODE, and the fixtures
shared by several modules. Plain helpers (the tool runner, the base training config, the tiny ImageFolder
generator) are in ``tool_helpers.py`` and ``model_helpers.py``."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
from tool_helpers import make_tiny_imagefolder, write_config  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def pynative():
    """Run one test in PYNATIVE_MODE, then return to GRAPH_MODE."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def venv_python():
    return sys.executable


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny 3-class ImageFolder of :func:`tool_helpers.make_tiny_imagefolder` (read-only for tests)."""
    return make_tiny_imagefolder(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tmp_path_factory):
    """:data:`tool_helpers.BASE_CONFIG` on ``tiny_data``, as a YAML recipe."""
    return write_config(tmp_path_factory.mktemp("tiny_config") / "tiny.yaml", data_dir=tiny_data)


# ------------------------------------------------------------------------------------------- test tiers
# Two tiers (tests/README.md): the unit tier, `make test-fast` (`pytest -m "not slow"`), is every test of
# UNIT_FILES and the tests named in UNIT_TESTS (by function name, all their parameters); every other test
# is marked `slow`, so a new or renamed test is in the full suite only until it is listed here.
# tests/test_tiers.py checks that every listed file and test exists.
UNIT_FILES = {
    "test_config.py", "test_data.py", "test_decision_checks.py", "test_device.py", "test_formats.py", "test_io.py",
    "test_registry.py",
    "test_logging.py", "test_models.py", "test_optim_schedule.py", "test_packaging.py", "test_ppt_reference.py",
    "test_thresholds.py", "test_tiers.py", "test_train_step.py", "test_weights.py",
}
UNIT_TESTS = {
    "test_amp.py": {
        "test_apply_amp_pins",
        "test_fp16_variance_flips_policies_near_7e_5",
    },
    "test_analysis.py": {
        "test_calibrated_thresholds_pool_the_requested_share",
        "test_statistics_equal_a_direct_inspect_compression_call",
        "test_threshold_for_share_counts_exactly",
        "test_variance_figure_has_expected_size_and_points",
    },
    "test_augreg.py": {
        "test_augreg_files_load_exactly",
    },
    "test_benchmark.py": {
        "test_all_selects_every_registered_model_in_dense_ppt_pairs",
        "test_official_table_pairs_rows_of_the_same_model_batch_and_mode",
        "test_official_comparison_refuses_a_step_the_official_code_cannot_run",
    },
    "test_distillation.py": {
        "test_alpha_outside_0_1_is_refused",
        "test_build_teacher_loads_the_checkpoint_into_a_frozen_renamed_teacher",
        "test_hard_distillation_needs_a_distilled_student",
        "test_loss_is_deits_hard_distillation_loss",
        "test_teacher_checkpoint_of_another_model_is_a_checkpoint_error",
        "test_teacher_must_predict_the_students_classes",
        "test_teacher_options_are_checked_first",
        "test_the_distillation_heads_gradient_comes_from_the_teachers_top1_class",
    },
    "test_distilled.py": {
        "test_official_rule_prunes_the_crafted_distillation_token",
    },
    "test_dropout.py": {
        "test_drop_path_drops_whole_samples_at_the_rate_and_rescales",
        "test_dropout_is_elementwise_and_identity_in_inference",
        "test_each_layer_has_its_own_stream_and_set_seed_repeats_them",
    },
    "test_export.py": {
        "test_export_model_checks_both_outputs_before_writing_either",
        "test_out_under_a_regular_file_is_one_error_line",
    },
    "test_flops.py": {
        "test_count_params_is_the_published_count_without_run_time_settings",
    },
    "test_fused_cpu.py": {
        "test_fp16_input_takes_the_portable_path",
        "test_fused_gelu_is_built_on_cpu_and_exact_with_its_gradient",
        "test_isa_level_comes_from_the_cpu_flags_and_sets_explicit_compiler_flags",
        "test_switches_and_a_failed_build_fall_back_to_the_portable_gelu",
        "test_the_library_exports_only_its_kernels",
    },
    "test_pos_embed.py": {
        "test_224_checkpoint_at_another_size",
        "test_distilled_checkpoint_keeps_both_prefix_tokens",
        "test_resize_matches_direct_bicubic_and_torch",
        "test_same_grid_is_exact_and_bad_shapes_are_refused",
        "test_what_cannot_be_resized_is_refused",
    },
    "test_predict.py": {
        "test_class_index_files",
        "test_imagenet_class_names",
    },
    "test_sweep.py": {
        "test_pareto_front_and_policy_comparison",
        "test_settings_are_labelled_with_the_r_each_block_removes_and_measured_once",
        "test_settings_dense_first_forced_policies_once",
        "test_tradeoff_figure_size_and_points",
    },
    "test_tune.py": {
        "test_schedule_costing_equals_a_built_model",
        "test_fit_meets_the_target_tightly",
        "test_searches_stay_within_budget_and_evaluate_nothing_twice",
        "test_one_policy_and_one_r_keep_the_search_in_that_space",
        "test_cheapest_within_a_drop",
        "test_split_is_disjoint_seeded_and_complete",
    },
    "test_visualize.py": {
        "test_token_map_marks_pooled_groups_and_pruned_patches",
        "test_token_map_skips_the_distillation_token_column",
    },
}


def in_unit_tier(file_name, test_name):
    """Whether the test function ``test_name`` of ``tests/file_name`` is in the unit tier."""
    return file_name in UNIT_FILES or test_name in UNIT_TESTS.get(file_name, ())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not in_unit_tier(item.path.name, item.originalname):
            item.add_marker(pytest.mark.slow)
