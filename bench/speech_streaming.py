"""Streaming real-time factor and latency of the speech app's foundation, on one thread.

Streams ``--seconds`` of audio through the default streaming network (Emformer CTC, 160 ms
segments, 40 ms look-ahead) with one bottleneck adapter per tail language in an AdapterBank,
chunk by chunk as audio would arrive (one segment per call): a single stream, and a batch of
``--streams`` streams of mixed languages (each routed to its own adapter). The real-time
factor counts the log-mel features and the decoding: RTF = compute seconds / audio seconds
per stream (below 1: faster than real time). The weights are freshly initialised: the time
of a step does not depend on their values.

    .venv/bin/python -m bench.speech_streaming                  # ~1 min on one CPU thread
    .venv/bin/python -m bench.speech_streaming --seconds 2 --repeats 1   # smoke run

Acceptance (issue 21): RTF <= 0.1 on one thread with <= 200 ms look-ahead.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from apps.speech_asr.features import LogMel
from apps.speech_asr.foundation import vocabulary
from apps.speech_asr.model import ADAPTER_TARGETS, FoundationConfig, SpeechModel
from apps.speech_asr.streaming import latency_breakdown_ms, stream_decode
from apps.speech_asr.utterance import SAMPLE_RATE
from core.adapters import AdapterBank, BottleneckConfig

LANGUAGES = ["lt", "lv", "sl", "is"]


def build(seed: int = 0) -> tuple[SpeechModel, AdapterBank]:
    """The default network with a per-language bottleneck bank (the default recipe's)."""
    torch.manual_seed(seed)
    model = SpeechModel(FoundationConfig(vocab_size=len(vocabulary()))).eval()
    bank = AdapterBank(
        model, BottleneckConfig(target_modules=ADAPTER_TARGETS, bottleneck_dim=32), LANGUAGES
    )
    return model, bank


def stream_seconds(
    model: SpeechModel, bank: AdapterBank, waveforms: torch.Tensor, repeats: int
) -> float:
    """Median seconds to featurize and stream-decode a batch of waveforms ``(B, samples)``."""
    frontend = LogMel()
    ids = torch.arange(waveforms.shape[0]) % len(LANGUAGES)
    times = []
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        features = torch.stack([frontend(w) for w in waveforms])
        lengths = torch.full((waveforms.shape[0],), features.shape[1])
        with bank.route(ids):
            stream_decode(model, features, lengths)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    parser.add_argument("--streams", type=int, default=8, help="streams in the batched run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, bank = build()
    latency = latency_breakdown_ms(model.config)
    generator = torch.Generator().manual_seed(0)
    samples = int(args.seconds * SAMPLE_RATE)
    rows = []
    for streams in sorted({1, args.streams}):
        audio = 0.1 * torch.randn(streams, samples, generator=generator)
        seconds = stream_seconds(model, bank, audio, args.repeats)
        rows.append(
            {
                "streams": streams,
                "audio_seconds_per_stream": args.seconds,
                "threads": args.threads,
                "compute_seconds": round(seconds, 4),
                "rtf_per_stream": round(seconds / (streams * args.seconds), 4),
                "rtf_batch": round(seconds / args.seconds, 4),
                "segment_ms": latency["segment"],
                "look_ahead_ms": latency["look_ahead"],
                "algorithmic_latency_ms": latency["total"],
            }
        )
    print("| streams | RTF per stream | RTF of the batch | look-ahead | algorithmic latency |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['rtf_per_stream']:.4f} | {r['rtf_batch']:.4f} | "
            f"{r['look_ahead_ms']:.0f} ms | {r['algorithmic_latency_ms']:.0f} ms |"
        )
    if args.csv is not None:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
