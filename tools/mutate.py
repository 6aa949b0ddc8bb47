"""Mutation check: does the test suite notice when training stops doing what a recipe says?

Each mutant is one small change of behaviour (the audit's 33 of 2026-11-28, plus a few
more), found in the package by a code PATTERN rather than a file and line, so it survives
code moving between modules. For each one, in a temporary copy of the project:
apply the change, run the tests that should catch it (pytest -x, PYTHONPATH = the copy),
restore. A mutant is CAUGHT when a test fails and SURVIVES when they all pass.

    python tools/mutate.py                 # all mutants (~4 min on 2 idle cores, ~25 under load)
    python tools/mutate.py M12 M20         # some of them
    python tools/mutate.py --list          # what each one changes, and its tests
    python tools/mutate.py --baseline      # first check the selected tests pass unmutated
    python tools/mutate.py --locate        # only check that every pattern is found once

Why a script of our own and not mutmut: mutmut mutates every operator and constant of the
package (thousands of mutants here), each paying MXNet's ~10 s import, and most of them
change nothing a table row depends on; these mutants are the behaviours a reproduction
must not lose, each with the few tests that pin it, so a full check runs in minutes.
Exit status: 0 when every mutant is caught, 1 otherwise, 2 when a pattern is not found
exactly once (the code moved or changed: update the pattern).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gluon_tricks"


@dataclass
class Mutant:
    """`pattern` is exact source text that must occur exactly once in the package; a tuple
    gives the same behaviour's code in its successive forms (before and after a refactor),
    with `replacement` a tuple of the same length: exactly one form must be found."""
    id: str
    behaviour: str
    pattern: str | tuple
    replacement: str | tuple
    tests: tuple  # pytest node ids (file or file::test)

    def forms(self) -> list[tuple[str, str]]:
        if isinstance(self.pattern, str):
            return [(self.pattern, self.replacement)]
        assert len(self.pattern) == len(self.replacement), self.id
        return list(zip(self.pattern, self.replacement))


A, C, R = "tests/test_applied.py", "tests/test_checkpoints.py", "tests/test_reliability.py"
MUTANTS = [
    Mutant("M1", "label smoothing, paper form: off value eps/(K-1)",
           "on, off = 1.0 - eps, eps / (classes - 1)", "on, off = 1.0 - eps, eps / classes",
           ("tests/test_tricks.py::test_smoothing_paper_form_eq4", f"{A}::test_the_recipes_smoothing_form_reaches_the_loss")),
    Mutant("M2", "label smoothing, GluonCV form: off value eps/K",
           "on, off = 1.0 - eps + eps / classes, eps / classes", "on, off = 1.0 - eps + eps / classes, eps / (classes - 1)",
           ("tests/test_tricks.py::test_smoothing_gluoncv_form",)),
    Mutant("M3", "stitch mixup cut at int(size * lambda)",
           "cut = int(size * lam)", "cut = int(round(size * lam))",
           ("tests/test_tricks.py::test_stitch_is_an_exact_concatenation",)),
    Mutant("M4", "distillation KL term weighted by T^2",
           "self.w * self.t * self.t * kl", "self.w * self.t * kl",
           ("tests/test_tricks.py::test_distillation_limits_and_numpy_definition",
            f"{A}::test_distillation_loss_is_the_papers_with_the_recipes_t_and_w")),
    Mutant("M4b", "distillation weights (1-w) hard, w soft",
           "(1 - self.w) * hard + self.w * self.t * self.t * kl", "self.w * hard + (1 - self.w) * self.t * self.t * kl",
           ("tests/test_tricks.py::test_distillation_limits_and_numpy_definition",)),
    Mutant("M5", "cosine spans every iteration after warm-up",
           ("span = max(1, epochs * iters_per_epoch - warm)",
            "frac = min(1.0, (t - warm) / max(1, epochs * iters_per_epoch - warm))"),
           ("span = max(1, epochs * iters_per_epoch - warm - 1)",
            "frac = min(1.0, (t - warm) / max(1, epochs * iters_per_epoch - warm - 1))"),
           ("tests/test_schedules.py",)),
    Mutant("M5b", "cosine decays to final_lr",
           "return final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * frac))",
           "return base_lr * 0.5 * (1 + math.cos(math.pi * frac))",
           (f"{A}::test_each_update_applies_the_schedules_learning_rate",)),
    Mutant("M6", "no bias decay covers BN beta",
           'r".*(_gamma|_beta|_bias)$"', 'r".*(_gamma|_bias)$"',
           ("tests/test_models.py::test_no_bias_decay_exempts_exactly_biases_and_bn",)),
    Mutant("M6b", "no bias decay means wd_mult = 0",
           "p.wd_mult = 0.0", "p.wd_mult = 0.1",
           ("tests/test_models.py::test_no_bias_decay_exempts_exactly_biases_and_bn",)),
    Mutant("M7", "resume restores the optimizer state",
           "trainer.load_states(str(ckpt.trainer_states))", "None",
           ("tests/test_engine.py::test_resume_equals_uninterrupted_exactly",)),
    Mutant("M7b", "a resumed epoch keeps its loss and image counts from before the interruption",
           ('carried = ckpt.state.get("partial_epoch", {})', 'position.partial = ckpt.state.get("partial_epoch", {})',
            'position.load_partial_epoch(ckpt.state.get("partial_epoch", {}))'),
           ("carried = {}", "position.partial = {}", "position.load_partial_epoch({})"),
           (f"{C}::test_resumed_epoch_row_counts_the_steps_before_the_interruption",)),
    Mutant("M8", "the CIFAR unpickler refuses numpy globals outside its list",
           "if (module, name) in self.ALLOWED:", 'if (module, name) in self.ALLOWED or module.startswith("numpy"):',
           ("tests/test_cifar.py",)),
    Mutant("M8b", "the CIFAR unpickler refuses code",
           "if (module, name) in self.ALLOWED:", "if True:",
           ("tests/test_cifar.py",)),
    Mutant("M9", "a second Ctrl-C aborts at once",
           # the first signal restores the default action, so the second ends the process
           "        signal.signal(signal.SIGINT, signal.SIG_DFL)\n", "        pass\n",
           (f"{R}::test_second_sigint_exits_at_once",)),
    Mutant("M10", "float16 gets multi_precision (fp32 master weights)",
           '"multi_precision": recipe.model.dtype == "float16"', '"multi_precision": False',
           ("tests/test_tricks.py::test_multi_precision_update_keeps_fp32_master_weights",)),
    Mutant("M11", "NAG is NAG",
           "return o.name, params", 'return ("sgd" if o.name == "nag" else o.name), params',
           (f"{A}::test_the_update_is_made_by_the_recipes_optimizer",)),
    Mutant("M12", "the loss is multiplied by the loss scale before backward",
           ("scaled = [l * scaler.scale for l in losses] if scaler.scale != 1.0 else losses",
            "scaled = [loss * scaler.scale for loss in losses]"),
           ("scaled = losses", "scaled = list(losses)"),
           (f"{A}::test_static_loss_scale_scales_the_gradients_and_not_the_update",)),
    Mutant("M13", "the recipe's smoothing form reaches the CIFAR stream",
           ("recipe.smoothing.form, part=rank", "recipe.smoothing.eps, recipe.smoothing.form)"),
           ('"gluoncv", part=rank', 'recipe.smoothing.eps, "gluoncv")'),
           (f"{A}::test_the_recipes_smoothing_form_reaches_the_loss",)),
    Mutant("M14", "only the last keep_checkpoints checkpoints stay",
           "for old in self.checkpoints()[:-keep]:", "for old in []:",
           (f"{C}::test_only_the_last_keep_checkpoints_stay",)),
    Mutant("M15", "PCA lighting eigenvalues (AlexNet)",
           "PCA_EIGVAL = np.array([55.46, 4.794, 1.148])", "PCA_EIGVAL = np.array([55.46, 4.794, 11.48])",
           ("tests/test_constants.py::test_lighting_is_alexnets_pca_noise_and_mxnets",)),
    Mutant("M15b", "BT.601 luma weights",
           "LUMA = np.array([0.299, 0.587, 0.114])", "LUMA = np.array([0.299, 0.114, 0.587])",
           ("tests/test_constants.py::test_zero_saturation_is_the_bt601_luma_in_every_channel",)),
    Mutant("M15c", "hue factor drawn from [-j, j]",
           '"hue": rng.uniform(-j, j, n)', '"hue": rng.uniform(-2 * j, 2 * j, n)',
           ("tests/test_constants.py::test_random_draws_have_the_papers_ranges",)),
    Mutant("M16", "export copies the newest checkpoint",
           ("ckpt = RunDir(Path(args.run_dir)).latest_checkpoint()", "ckpt = run.latest_checkpoint()\n"),
           ("ckpt = next((RunDir(Path(args.run_dir)).verify(p) for p in RunDir(Path(args.run_dir)).checkpoints()), None)",
            "ckpt = next((run.verify(p) for p in run.checkpoints()), None)\n"),
           ("tests/test_models.py::test_export_copies_the_newest_valid_checkpoint",)),
    Mutant("M17", "the teacher predicts on the mixed batch",
           ("[teacher(xd) for xd in xs]", "[self.teacher(x) for x in xs]",
            "[self.teacher(self.teacher_input(x)) for x in xs]"),
           # after the step-loss refactor the teacher cannot reach the unmixed batch in one line:
           # the nearest one-line bug gives it other images than the student's (the batch reversed)
           ("[teacher(xd) for xd in gluon.utils.split_and_load(x, contexts)]", "[self.teacher(x[::-1]) for x in xs]",
            "[self.teacher(self.teacher_input(x[::-1])) for x in xs]"),
           (f"{A}::test_the_teacher_predicts_on_the_mixed_batch",)),
    Mutant("M19", "RecordIO random-resized crop area from data.min_area",
           "min_random_area=spec.min_area", "min_random_area=1.0",
           ("tests/test_imagenet.py::test_training_crops_are_the_papers_random_resized_crops",)),
    Mutant("M20", "updates normalized by the global batch on several devices",
           ("trainer.step(recipe.data.batch_size * scaler.scale)",
            "optimizer_step(trainer, scaler, contexts, recipe.data.batch_size, _checks_reduced(job))",
            "optimizer_step(trainer, scaler, contexts, recipe.data.batch_size, checks_reduced(scaler, contexts),"),
           ("trainer.step(images[0].shape[0] * scaler.scale)",
            "optimizer_step(trainer, scaler, contexts, images[0].shape[0], _checks_reduced(job))",
            "optimizer_step(trainer, scaler, contexts, images[0].shape[0], checks_reduced(scaler, contexts),"),
           (f"{A}::test_two_devices_normalize_by_the_global_batch",
            "tests/test_distributed.py::test_two_contexts_equal_one_context_on_the_full_batch")),
    Mutant("M21", "a table row's paper numbers come from its own CSV row",
           "row = found[0]", "row = rows[min(rows.index(found[0]) + 1, len(rows) - 1)]",
           ("tests/test_tables.py::test_every_table_resolves_and_one_published_number_per_table",)),
    Mutant("M21c", "top-1 and top-5 columns not swapped",
           "out[metric + suffix] = value", 'out[{"top1": "top5", "top5": "top1"}[metric] + suffix] = value',
           ("tests/test_tables.py::test_every_table_resolves_and_one_published_number_per_table",)),
    Mutant("M22", "zero-gamma zeroes the LAST BN of each residual branch",
           "return branch[-1] if branch else None", "return branch[0] if branch else None",
           (f"{A}::test_zero_gamma_zeroes_the_bn_that_feeds_the_residual_sum",)),
    Mutant("M23", "random mixing draws among its choices",
           "s.choices[rng.integers(len(s.choices))]", "s.choices[0]",
           (f"{A}::test_random_mixing_draws_every_choice",)),
    Mutant("M24", "metrics lines at or past the resumed epoch are dropped",
           ("run.truncate_metrics(start_epoch)", "job.run.truncate_metrics(position.epoch)",
            "setup.run.truncate_metrics(position.epoch)"), ("None", "None", "None"),
           (f"{C}::test_resume_drops_stale_and_cut_metrics_lines",)),
    Mutant("M25", "a different recipe's run directory is refused",
           ('if info is None or info.get("hash") != recipe_hash:', 'if info.get("hash") != recipe_hash:'),
           ("if info is None:", "if False:"),
           (f"{C}::test_a_different_recipes_run_directory_is_refused",)),
    Mutant("M26", "the optimizer applies the recipe's schedule at its speed",
           ('"lr_scheduler": PaperLR(iters_per_epoch,', "schedule = Schedule.from_recipe(recipe, iters_per_epoch)"),
           ('"lr_scheduler": PaperLR(2 * iters_per_epoch,', "schedule = Schedule.from_recipe(recipe, 2 * iters_per_epoch)"),
           (f"{A}::test_each_update_applies_the_schedules_learning_rate",)),
    # Beyond the audit: promises the new tests pin.
    Mutant("X1", "augment = gluoncv has no colour jitter",
           'color=spec.augment == "followup"', 'color=spec.augment != "none"',
           ("tests/test_constants.py::test_recipe_augment_names_choose_the_pipeline",)),
    Mutant("X2", "warm-up starts at warmup_start_lr",
           "return warmup_start_lr + (base_lr - warmup_start_lr) * t / warm", "return base_lr * t / warm",
           (f"{A}::test_each_update_applies_the_schedules_learning_rate",)),
    Mutant("X3", "keep_checkpoints from the recipe",
           ("keep=recipe.system.keep_checkpoints", "keep=job.recipe.system.keep_checkpoints",
            "keep=setup.recipe.system.keep_checkpoints"), ("keep=2", "keep=2", "keep=2"),
           (f"{C}::test_only_the_last_keep_checkpoints_stay",)),
    Mutant("X4", "the recipe's temperature reaches the distillation loss",
           ("DistillationLoss(recipe.distill.temperature,", "DistillStep(teacher, recipe.distill.temperature,",
            "DistillStep(teacher, d.temperature,"),
           ("DistillationLoss(20.0,", "DistillStep(teacher, 20.0,", "DistillStep(teacher, 20.0,"),
           (f"{A}::test_distillation_loss_is_the_papers_with_the_recipes_t_and_w",)),
    Mutant("X5", "the recipe's momentum reaches the optimizer",
           'params["momentum"] = o.momentum', 'params["momentum"] = 0.9',
           (f"{A}::test_the_update_is_made_by_the_recipes_optimizer",)),
    Mutant("X6", "the trainer-states unpickler refuses code",
           "if (module, name) in TRAINER_STATES_CLASSES:", "if True:",
           ("tests/test_own_files.py::test_a_crafted_trainer_states_runs_no_code_at_resume",)),
    Mutant("X7", "checkpoint pruning deletes only the checkpoints the run wrote",
           'CHECKPOINT_NAME = re.compile(r"^epoch\\d{4}-step\\d{7}$")', 'CHECKPOINT_NAME = re.compile(r"^[^.]")',
           ("tests/test_own_files.py::test_pruning_deletes_only_the_checkpoints_it_wrote",)),
    # The rank table's arithmetic (issue 25): what makes a step "larger than its seed noise".
    Mutant("X8", "a difference's interval uses Welch's degrees of freedom, not pooled n_a + n_b - 2",
           "df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))",
           "df = len(a) + len(b) - 2",
           ("tests/test_rank.py::test_welch_interval_of_unequal_spreads_by_hand",)),
    Mutant("X9", "a difference's interval uses t, not the normal quantile",
           "half = float(t.ppf((1 + level) / 2, df)) * se", "half = 1.959964 * se",
           ("tests/test_rank.py::test_welch_interval_of_equal_spreads_is_the_textbook_t_interval",)),
    Mutant("X10", "the pooled seed std weights each row by its n - 1",
           "sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1) / dof",
           "sum(statistics.variance(g) for g in groups if len(g) > 1) / len(groups)",
           ("tests/test_rank.py::test_pooled_std_by_hand",)),
    Mutant("X11", "a paired difference pairs each seed with the same seed of the other row",
           "diffs = [b[s] - a[s] for s in sorted(set(a) & set(b))]",
           "diffs = [x - y for x, y in zip(sorted(b.values()), sorted(a.values()))]",
           ("tests/test_rank.py::test_paired_interval_bounds_are_where_scipys_paired_test_gives_p_005",)),
]


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def copy_project(dest: Path) -> None:
    for f in project_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def locate(copy: Path, m: Mutant) -> tuple[Path, str, str] | str:
    """(the one package file holding the pattern, pattern, replacement), or why there is none."""
    files = sorted((copy / PACKAGE).rglob("*.py"))
    texts = {p: p.read_text() for p in files}
    found, report = [], []
    for pattern, replacement in m.forms():
        hits = [(p, t.count(pattern)) for p, t in texts.items() if pattern in t]
        report.append(f"{pattern!r} in " + (", ".join(f"{p.relative_to(copy)} x{n}" for p, n in hits) or "nowhere"))
        found += [(p, pattern, replacement, n) for p, n in hits]
    if len(found) == 1 and found[0][3] == 1:
        return found[0][:3]
    return f"{m.id}: {'; '.join(report)}: exactly one occurrence of one form is needed in {PACKAGE}/"


def pytest(copy: Path, tests, timeout: int) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    failed = re.findall(r"^FAILED (\S+)", p.stdout, re.M)
    return p.returncode, failed[0] if failed else p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="first run the selected tests unmutated")
    ap.add_argument("--locate", action="store_true", help="only check that every pattern is found once")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    if args.ids and len(chosen) != len(set(args.ids)):
        print(f"unknown ids: {sorted(set(args.ids) - {m.id for m in MUTANTS})}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            forms = "\n      ".join(f"{p!r} -> {r!r}" for p, r in m.forms())
            print(f"{m.id:5} {m.behaviour}\n      {forms}\n      {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gluon-tricks-mutants-") as tmp:
        copy = Path(tmp)
        copy_project(copy)
        located = {m.id: locate(copy, m) for m in chosen}
        missing = [v for v in located.values() if isinstance(v, str)]
        if missing:
            print("\n".join(missing), file=sys.stderr)
            return 2
        if args.locate:
            for m in chosen:
                print(f"{m.id:5} {located[m.id][0].relative_to(copy)}")
            return 0
        if args.baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            code, info = pytest(copy, tests, args.timeout * 2)
            print(f"baseline: {'pass' if code == 0 else 'FAIL ' + info}", flush=True)
            if code != 0:
                return 2
        caught, survived, errors = [], [], []
        for m in chosen:
            path, pattern, replacement = located[m.id]
            original = path.read_text()
            path.write_text(original.replace(pattern, replacement, 1))
            t0 = time.time()
            try:
                code, info = pytest(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = {0: "SURVIVED", 1: "caught"}.get(code, "ERROR")
            {"caught": caught, "SURVIVED": survived}.get(verdict, errors).append(m.id)
            print(f"{m.id:5} {verdict:8} {time.time() - t0:5.0f}s  {m.behaviour}  [{info}]", flush=True)
    total = len(chosen)
    print(f"\nscore: {len(caught)}/{total} caught" + (f"; survived: {' '.join(survived)}" if survived else "")
          + (f"; errors (collection, timeout): {' '.join(errors)}" if errors else ""))
    return 0 if len(caught) == total else 1


if __name__ == "__main__":
    sys.exit(main())
