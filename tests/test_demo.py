"""The demo (``sde_diffusion.app.demo``) on a small plan: every stage runs and the report stands on
its own (its images exist next to it). The full plan is ``make demo``."""
import os
import re

from sde_diffusion.app.demo import Plan, main

SMALL = Plan(
    overrides={"training.n_iters": 20, "training.snapshot_freq": 20, "training.sample_freq": 0, "training.progress": False, "sampling.steps": 10},
    n_samples=16, fast_steps=4, nll_points=20, elbo_terms=5, nll_tol=1e-2, bench_methods=("dpm_solver_pp", "euler_maruyama"),
    bench_nfe=(5, 10), bench_samples=40,
)


def test_demo_runs_every_stage_and_writes_a_self_contained_report(tmp_path, capsys):
    workdir = str(tmp_path / "demo")
    facts = main(workdir, SMALL)
    out = capsys.readouterr().out
    assert re.search(r"This takes about [\d.]+ minutes here", out)
    for stage in ("[1/5] training", "[2/5] sampling", "[3/5] test-set likelihood", "[4/5] step-count benchmark", "[5/5] report"):
        assert stage in out
    assert f"report     {os.path.join(workdir, 'report.md')}" in out and "tensorboard --logdir" in out
    assert facts["samples"]["fast"]["nfe"] == 5 and facts["samples"]["pc"]["nfe"] == 21
    assert {(r.method, r.nfe) for r in facts["bench"].rows} == {(m, n) for m in SMALL.bench_methods for n in SMALL.bench_nfe}
    with open(os.path.join(workdir, "report.md"), encoding="utf-8") as fh:
        report = fh.read()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 2 and all(os.path.getsize(os.path.join(workdir, p)) > 1000 for p in images)
    assert "bits/dim" in report and "DDPM bound" in report and "not comparable with a published FID" in report
    assert os.path.exists(os.path.join(workdir, "eval", "feature_classifier.pt.json"))
