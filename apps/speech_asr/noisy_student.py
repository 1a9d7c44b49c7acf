"""``python -m apps.speech_asr.noisy_student``: Whisper teaches the streaming model.

The label-scarce setting: each tail language has its transcribed training utterances (the
recipes' 300 / 120 / 80 / 40 for lt / lv / sl / is, or ``--labelled N`` each) and
``--unlabelled`` more recordings without transcripts (the embedded corpus's next train
utterances: same speakers and conditions, true texts never read).

1. **Teacher**: the Whisper recipe (``configs/whisper.yaml``: per-language LoRA on Whisper
   base) fitted on the labelled utterances only (seed 0), tested like any run; or
   ``--teacher RUN_DIR`` (a finished run of that recipe with the same labelled counts:
   its ``checkpoints/last.ckpt`` and ``metrics.json``).
2. **Pseudo-labels**: the teacher transcribes the unlabelled audio with beam search over the
   whole clip (not streaming); ``pseudo_labels.json`` holds the texts, and the summary their
   CER against the true transcripts (known here, never used for training).
3. **Students**: the streaming Emformer recipe (default config: frozen foundation,
   per-language adapters, SpecAugment, noisy audio) per seed, trained on the labelled
   utterances alone and on labelled + pseudo-labelled ones (``data.pseudo_labels``).

Writes ``<out>/results.json`` (``--resume`` keeps finished runs), ``summary.md`` (test CER
per tail language: teacher, student on labels alone, noisy student; mean ± std over seeds)
and ``cer_per_language.png``. ``--teacher-options "..."`` go to the teacher's command line;
other extra arguments to every student's (e.g. ``--trainer.max_steps 300``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from core.atomic import atomic_write_text
from core.benchmarking import mean_std, write_summary

from .benchmark import test_metrics_of
from .metrics import per_language_rates
from .train import CONFIG_DIR, main

WHISPER_RECIPE = CONFIG_DIR / "whisper.yaml"
#: Rows of the CER table: (label, run kind, metric key pattern).
ROWS = (
    ("teacher: Whisper base + per-language LoRA (labelled only)", "teacher", "adapted/cer/{}"),
    ("student on the labelled utterances alone", "labelled", "cer/{}"),
    ("noisy student: labelled + pseudo-labelled", "noisy", "cer/{}"),
)


def counts_option(counts: dict[str, int]) -> list[str]:
    """``--data.train_utterances {lt: n, ...}``."""
    return [
        "--data.train_utterances",
        "{" + ", ".join(f"{c}: {n}" for c, n in counts.items()) + "}",
    ]


def record(kind: str, seed: int, run_dir: str | Path) -> dict[str, Any]:
    """A run's test metrics and folder."""
    metrics = test_metrics_of(run_dir)
    return {"kind": kind, "seed": seed, "metrics": metrics, "run_dir": str(run_dir)}


def pseudo_label(
    module: Any, data: Any, counts: dict[str, int], unlabelled: int, path: Path, teacher: str
) -> dict[str, Any]:
    """Transcribe the ``unlabelled`` train utterances after each language's labelled ones
    with the fitted teacher ``module`` (features from its data module ``data``); write the
    pseudo-label file; return the texts' CER/WER against the true transcripts."""
    from .data import collate
    from .embedded import embedded_split
    from .pseudo_labels import write_pseudo_labels

    utterances = [
        u
        for lang, n in counts.items()
        for u in embedded_split(
            lang, "train", n + unlabelled, seed=data.split_seed, cache_dir=data.cache_dir
        )[n:]
    ]
    examples = data.examples(utterances)
    size = data.eval_batch_size
    batches = [collate(examples[i : i + size]) for i in range(0, len(examples), size)]
    decoded = module.transcribe(batches, adapters=True, num_beams=module.num_beams)
    texts = dict(zip(decoded.ids, decoded.hypotheses, strict=True))
    write_pseudo_labels(path, texts, teacher=teacher)
    rates = per_language_rates(decoded.languages, decoded.references, decoded.hypotheses)
    return {lang: {"cer": r["cer"], "wer": r["wer"]} for lang, r in rates.items()}


def cer_table(records: list[dict], languages: list[str], quality: dict) -> str:
    """Test CER per tail language for teacher and students; the pseudo-labels' own CER."""
    rows = [f"| model | {' | '.join(languages)} | mean |", "|---|" + "---|" * (len(languages) + 1)]
    for label, kind, pattern in ROWS:
        cells, means = [], []
        for lang in languages:
            values = [r["metrics"].get(pattern.format(lang)) for r in records if r["kind"] == kind]
            mean, std = mean_std(values)
            means.append(mean)
            cells.append(f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {std:.3f}")
        rows.append(f"| {label} | {' | '.join(cells)} | {sum(means) / len(means):.3f} |")
    if quality:
        cells = [f"{quality[lang]['cer']:.3f}" for lang in languages]
        mean = sum(quality[lang]["cer"] for lang in languages) / len(languages)
        rows.append(
            f"| pseudo-labels (unlabelled train audio) | {' | '.join(cells)} | {mean:.3f} |"
        )
    return "\n".join(rows)


def cer_figure(records: list[dict], languages: list[str], path: Path) -> Path:
    """Grouped bars: test CER per tail language, teacher and both students."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.training.report import write_figure

    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ROWS)
    for i, (label, kind, pattern) in enumerate(ROWS):
        stats = [
            mean_std([r["metrics"].get(pattern.format(c)) for r in records if r["kind"] == kind])
            for c in languages
        ]
        xs = [j + (i - (len(ROWS) - 1) / 2) * width for j in range(len(languages))]
        axis.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=label)
    axis.set_xticks(range(len(languages)), languages)
    axis.set_ylabel("test CER")
    axis.set_title("Noisy student: Whisper teacher, streaming student")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return write_figure(figure, path)


def teacher_model(args: argparse.Namespace, labelled: list[str], out: Path) -> tuple:
    """(fitted Whisper module, its data module, its run folder): ``--teacher``'s run
    loaded from its last checkpoint, or the recipe fitted now on the labelled utterances."""
    if args.teacher:
        from .data import SpeechDataModule
        from .whisper.module import WhisperAdapterModule

        run_dir = Path(args.teacher)
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file() or not (run_dir / "metrics.json").is_file():
            raise FileNotFoundError(
                f"--teacher {run_dir}: expected a finished run of the Whisper recipe there "
                "(checkpoints/last.ckpt and metrics.json)."
            )
        module = WhisperAdapterModule.load_from_checkpoint(checkpoint)
        data = SpeechDataModule(
            languages=module.languages,
            head_languages=[],
            frontend="whisper",
            window_seconds=module.expected_frames / 100,
        )
        return module, data, run_dir
    print("[noisy student] teacher: Whisper recipe on the labelled utterances", flush=True)
    # the teacher's extra options first: the labelled counts and the folder are ours
    cli = main(["--config", str(WHISPER_RECIPE), *shlex.split(args.teacher_options),
                *labelled, "--seed_everything", "0",
                "--trainer.default_root_dir", str(out / "teacher")])  # fmt: skip
    return cli.model, cli.datamodule, Path(cli.trainer.log_dir)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--labelled", type=int, default=None,
        help="labelled utterances per tail language (default: the recipe's own counts)",
    )  # fmt: skip
    parser.add_argument("--unlabelled", type=int, default=150, help="unlabelled per language")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-options", default="", help="options of the teacher run")
    parser.add_argument("--teacher", help="a finished Whisper recipe run to use as teacher")
    parser.add_argument("--out", default="runs/noisy_student")
    parser.add_argument("--resume", action="store_true", help="keep runs in results.json")
    args, extra = parser.parse_known_args(argv)
    if (args.labelled is not None and args.labelled < 1) or args.unlabelled < 1:
        parser.error("--labelled and --unlabelled must be at least 1")
    return args, extra


def run(argv: Sequence[str] | None = None) -> Path:
    """Teacher, pseudo-labels, students; return the path of ``summary.md``."""
    args, extra = parse_args(argv)
    out = Path(args.out)
    recipe = yaml.safe_load(WHISPER_RECIPE.read_text())["data"]
    languages = list(recipe["languages"])
    counts = (
        {c: int(recipe["train_utterances"][c]) for c in languages}
        if args.labelled is None
        else dict.fromkeys(languages, args.labelled)
    )
    labelled = counts_option(counts)
    state: dict[str, Any] = {"records": [], "pseudo_label_quality": {}}
    if args.resume and (out / "results.json").is_file():
        state = json.loads((out / "results.json").read_text())
    done = {(r["kind"], r["seed"]) for r in state["records"]}
    pseudo_path = out / "pseudo_labels.json"
    start = time.time()

    def save() -> None:
        atomic_write_text(out / "results.json", json.dumps(state, indent=2) + "\n")

    if ("teacher", 0) not in done or not pseudo_path.is_file():
        module, data, run_dir = teacher_model(args, labelled, out)
        state["records"] = [r for r in state["records"] if r["kind"] != "teacher"]
        state["records"].append(record("teacher", 0, run_dir))
        print("[noisy student] pseudo-labelling the unlabelled audio", flush=True)
        state["pseudo_label_quality"] = pseudo_label(
            module, data, counts, args.unlabelled, pseudo_path, teacher=str(run_dir)
        )
        save()
    pseudo = ["--data.pseudo_labels", str(pseudo_path)]
    for seed in args.seeds:
        for kind, options in (("labelled", []), ("noisy", pseudo)):
            if (kind, seed) in done:
                continue
            print(f"[noisy student] student ({kind}), seed {seed}", flush=True)
            root = out / kind / f"seed{seed}"
            cli = main([*extra, *labelled, *options, "--seed_everything", str(seed),
                        "--trainer.default_root_dir", str(root)])  # fmt: skip
            state["records"].append(record(kind, seed, cli.trainer.log_dir))
            save()
    save()
    records = state["records"]
    cer_figure(records, languages, out / "cer_per_language.png")
    lines = [
        "# Noisy student: Whisper base teaches the streaming Emformer",
        "",
        f"Label-scarce setting: {counts} labelled and {args.unlabelled} unlabelled "
        f"training utterances per tail language (embedded corpus); students' test CER is "
        f"streaming, mean ± std over seeds {args.seeds}; the teacher is one run (seed 0).",
        "",
        cer_table(records, languages, state["pseudo_label_quality"]),
        "",
        "![CER per language](cer_per_language.png)",
        "",
        f"{len(records)} runs ({(time.time() - start) / 60:.1f} min in this invocation).",
    ]
    return write_summary(out / "summary.md", lines, "apps.speech_asr.noisy_student", argv)


if __name__ == "__main__":
    run()
