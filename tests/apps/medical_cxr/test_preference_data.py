"""Preference pairs: mined from the frozen SFT model's samples (best vs worst clinical F1),
seeded, with the reference log-probabilities of the network with its adapter disabled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.medical_cxr.labeler import label_report, label_vector
from apps.medical_cxr.metrics import clinical_f1_per_report, f1_gains
from apps.medical_cxr.model import train_tokenizer
from apps.medical_cxr.preference_data import (
    PAIR_FIELDS,
    PreferencePairs,
    balance_normal_abnormal,
    candidate_scores,
    mine_pairs,
    sequence_logprobs,
    write_pairs,
)
from apps.medical_cxr.report_module import ReportGenModule
from core.adapters import LoraConfig, disable_adapters

from .tiny import TINY_ARCH

REPORTS = [
    "the heart is normal in size . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . small left pleural effusion .",
    "lungs are clear . no acute cardiopulmonary process .",
    "there is a right upper lobe opacity concerning for pneumonia .",
]


def tiny_module() -> ReportGenModule:
    torch.manual_seed(0)
    module = ReportGenModule(
        **TINY_ARCH, adapter=LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    module.tokenizer = train_tokenizer(REPORTS * 3, 120)
    return module


def studies(n: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(1, 32, 32, generator=gen), "text": REPORTS[i % 4], "study_id": f"S{i}"}
        for i in range(n)
    ]


def test_pairs_are_best_and_worst_of_the_samples_and_seeded():
    module = tiny_module()
    data = studies()
    pairs = mine_pairs(module, data, num_samples=4, temperature=1.5, seed=3)
    assert 0 < len(pairs) <= 6
    for pair in pairs:
        assert pair["chosen_score"] > pair["rejected_score"]
        reference = pair["reference"]
        assert clinical_f1_per_report(reference, pair["chosen"]) == pair["chosen_score"]
        assert clinical_f1_per_report(reference, pair["rejected"]) == pair["rejected_score"]
    again = mine_pairs(module, data, num_samples=4, temperature=1.5, seed=3)
    assert [(p["chosen"], p["rejected"]) for p in again] == [
        (p["chosen"], p["rejected"]) for p in pairs
    ]
    assert len(mine_pairs(module, data, num_samples=4, temperature=1.5, max_studies=2, seed=3)) <= 2
    assert module.model.training  # left in the mode it was in


def test_reference_logprobs_are_the_network_without_its_adapter():
    module = tiny_module()
    with torch.no_grad():  # a trained adapter: the policy is no longer the SFT model
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    pair = mine_pairs(module, studies(4), num_samples=4, temperature=1.5, seed=0)[0]
    module.eval()
    image, text = pair["image"][None], [pair["rejected"]]
    with torch.no_grad():
        policy = sequence_logprobs(module, image, text)
        with disable_adapters(module.model):
            frozen = sequence_logprobs(module, image, text)
    assert pair["ref_rejected"].item() == pytest.approx(frozen.item(), abs=1e-4)
    assert policy.item() != frozen.item()


def test_pairs_dataset_and_jsonl(tmp_path):
    pairs = [
        {"study_id": "S1", "reference": "a", "normal": True, "chosen": "b", "rejected": "c",
         "chosen_score": 1.0, "rejected_score": 0.0, "image": torch.zeros(1, 4, 4)},
    ]  # fmt: skip
    data = PreferencePairs(pairs)
    assert len(data) == 1 and data[0] is pairs[0]
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == {k: pairs[0][k] for k in PAIR_FIELDS}


def test_pairs_know_whether_their_study_is_normal_and_balance_keeps_as_many_normal():
    module = tiny_module()
    pairs = mine_pairs(module, studies(8), num_samples=4, temperature=1.5, seed=3)
    for pair in pairs:  # REPORTS 0 and 2 are normal, 1 and 3 name findings
        assert pair["normal"] == (pair["reference"] in (REPORTS[0], REPORTS[2]))
    fake = [{"normal": i % 4 != 0, "study_id": f"S{i}"} for i in range(12)]  # 3 abnormal
    kept = balance_normal_abnormal(fake, seed=1)
    assert sum(not p["normal"] for p in kept) == 3 and sum(p["normal"] for p in kept) == 3
    assert [p["study_id"] for p in kept] == sorted(
        (p["study_id"] for p in kept), key=lambda s: int(s[1:])
    )  # order kept
    assert balance_normal_abnormal(fake, seed=1) == kept  # seeded
    assert balance_normal_abnormal(fake, seed=2) != kept
    only_normal = [p for p in fake if p["normal"]]
    assert balance_normal_abnormal(only_normal) == only_normal  # nothing to balance against


def test_corpus_gain_scores_each_candidate_by_the_observations_it_names():
    references = [REPORTS[0], REPORTS[1], REPORTS[3]]
    candidates = [
        [REPORTS[0], REPORTS[1]],  # right; a false alarm of two findings
        [REPORTS[1], REPORTS[2], "mild cardiomegaly ."],  # both; neither; one of two
        [REPORTS[3], REPORTS[0]],
    ]
    scores = candidate_scores(references, candidates, corpus_gain=True)
    assert [len(s) for s in scores] == [2, 3, 2]  # aligned with the candidates
    labels = [label_vector(label_report(r)) for r in references]
    true = np.array([t for t, c in zip(labels, candidates, strict=True) for _ in c], dtype=bool)
    pred = np.array([label_vector(label_report(x)) for c in candidates for x in c], dtype=bool)
    hit, false_alarm = f1_gains(true, pred)
    by_hand = [
        (hit * (t & p) - false_alarm * (~t & p)).sum() for t, p in zip(true, pred, strict=True)
    ]
    assert [x for s in scores for x in s] == pytest.approx(by_hand)
    assert scores[0][0] > scores[0][1] and scores[1][0] > scores[1][2] > scores[1][1]
    # Without corpus_gain: each candidate's own clinical F1, as before.
    assert candidate_scores(references, candidates)[1] == [
        clinical_f1_per_report(REPORTS[1], c) for c in candidates[1]
    ]
    module = tiny_module()
    with pytest.raises(ValueError, match="weights must be None"):
        mine_pairs(module, studies(2), num_samples=2, corpus_gain=True, weights=[1.0] * 14)
    for pair in mine_pairs(module, studies(8), num_samples=4, temperature=1.5, seed=3,
                           corpus_gain=True):  # fmt: skip
        assert pair["chosen_score"] > pair["rejected_score"]


def test_beam_search_rejected_is_the_sft_models_own_report():
    module = tiny_module()
    data = studies(8)
    pairs = mine_pairs(module, data, num_samples=4, temperature=1.5, seed=3, rejected="beam_search")
    assert pairs
    by_id = {s["study_id"]: s for s in data}
    module.eval()
    for pair in pairs:
        with torch.no_grad(), disable_adapters(module.model):
            (beam,) = module.generate_reports(by_id[pair["study_id"]]["image"][None])
        assert pair["rejected"] == beam
        assert pair["chosen_score"] > pair["rejected_score"]
        assert pair["rejected_score"] == clinical_f1_per_report(pair["reference"], beam)
    with pytest.raises(ValueError, match="rejected='greedy' must be one of"):
        mine_pairs(module, data, num_samples=2, rejected="greedy")
