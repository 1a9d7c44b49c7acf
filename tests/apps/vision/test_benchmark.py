from apps.vision.benchmark import format_summary, run_benchmark
from apps.vision.metrics import ResultsDB

from .conftest import TINY_DATA


def test_benchmark_rows_table_and_plots(tmp_path, cache_dir, tiny_model_kwargs):
    methods = ["zeroshot", "linear_probe", "ft", "wiseft", "uniform_soup", "greedy_soup"]
    rows = run_benchmark(
        seeds=(0,),
        out=tmp_path,
        data_kwargs={**TINY_DATA, "cache_dir": cache_dir},
        model_kwargs=tiny_model_kwargs,
        methods=methods,
    )
    names = [r["name"] for r in rows]
    assert names[:3] == ["zeroshot", "linear_probe", "ft"] and "greedy_soup" in names
    assert sum(n.startswith("sweep_") for n in names) == 2  # the soup's other ingredients
    wiseft = next(r for r in rows if r["name"] == "wiseft")
    assert 0.0 <= wiseft["alpha"] <= 1.0
    # every row has its effective robustness against the ID-only fine-tuned baselines
    assert all(isinstance(r["eff_rob"], float) for r in rows)
    stored = ResultsDB(tmp_path / "results.jsonl").rows()
    assert [r["name"] for r in stored if not r["name"].startswith("wiseft_alpha_")] == names
    for name in ("frontier.png", "reliability.png", "effective_robustness.json"):
        assert (tmp_path / name).is_file(), name
    table = format_summary(rows, TINY_DATA["shifts"]).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {m}" for m in methods]
