"""The step-count benchmark: every sampler across an NFE grid on one problem, scored against a
high-accuracy probability-flow ODE solution from the same latents and against the true law.

A ``Problem`` says what is sampled (SDE, score, start and end times, final denoise, number of
samples, seed, and what is known about the target). A ``Benchmark`` holds the problem's matched
latents, its reference solution and its true samples (each computed once), and runs methods:

    bench = Benchmark(mixture_problem(ring(), get_sde("vp"), sigma_start=80, sigma_end=0.002))
    row = bench.run("euler_maruyama:probability_flow=True", steps=100)
    result = bench.sweep()                 # every method of solvers.available()
    write_report(result, "benchmarks/results/ring_vp")

Fixed-step methods are run at the step counts whose counted NFE best matches each target of the
NFE grid (NFE is affine in ``steps`` for every method, so two probe runs on a tiny batch fix the
map); adaptive methods (``Method.is_adaptive`` of the run's options) are swept over their
tolerances ``rtol`` = ``atol`` instead. Deterministic methods (``Method.is_deterministic`` of the
run's options) are also scored against the reference: median and RMS distance and the fraction of
samples that changed mode (RMS alone is dominated by those few). Every row gets the distribution metrics of ``sde_diffusion.evaluation.metrics``.

Under torchrun the runs on all latents and the reference are split across the processes
(``solve_split``) and every process scores the gathered samples, so all of them return the same rows.
"""
from sde_diffusion.evaluation.benchmark.problem import (
    MAX_NFE,
    NFE_GRID,
    TOLERANCES,
    Problem,
    mixture_problem,
    noise_level,
    noise_level_warning,
    prior_latents,
    quality,
    reference_solution,
    time_of_noise_level,
)
from sde_diffusion.evaluation.benchmark.report import COLUMNS, markdown_table, plot_quality, write_csv, write_report
from sde_diffusion.evaluation.benchmark.runner import (
    Benchmark,
    BenchmarkResult,
    BudgetedScore,
    NFEBudgetExceeded,
    Row,
    parse_method,
    solve_split,
)

__all__ = [
    "COLUMNS",
    "MAX_NFE", "NFE_GRID", "TOLERANCES", "Benchmark", "BenchmarkResult", "BudgetedScore", "NFEBudgetExceeded",
    "Problem", "Row", "markdown_table", "mixture_problem", "noise_level", "noise_level_warning", "parse_method",
    "plot_quality", "prior_latents", "quality", "reference_solution", "solve_split", "time_of_noise_level",
    "write_csv", "write_report",
]
