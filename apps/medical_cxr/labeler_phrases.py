"""The phrases of the rule-based labeler (:mod:`.labeler`): what names each observation, and
the trigger words that make a mention negative or uncertain.

Patterns are regular expressions over lower-cased report text; :mod:`.labeler` compiles them
(whole words only) and applies them. Kept apart from the algorithm so the vocabulary can be
read, and extended, on its own.
"""

from __future__ import annotations

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# --- mentions ---------------------------------------------------------------------------------

MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"(?:widen\w*|enlarg\w*|prominen\w*) (?:of (?:the )?)?(?:cardio)?mediastin\w*",
        r"(?:cardio)?mediastin\w* (?:silhouette |contours? )?(?:is |are |appears |remains )?"
        r"(?:\w+ )?(?:widen\w*|enlarg\w*|prominen\w*)",
        r"enlarged cardiomediastinum",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac (?:enlargement|silhouette enlargement)",
        r"(?:enlarged|large|prominent) (?:heart|cardiac silhouette|cardiac shadow)",
        r"enlargement of the (?:heart|cardiac silhouette)",
        r"(?:heart|cardiac silhouette|heart size|cardiac size) (?:is |are |appears |remains )?"
        r"(?:again |still )?(?:\w+ )?(?:enlarged|large|increased)",
    ],
    "Lung Opacity": [
        r"opaci\w*",
        r"infiltrat\w*",
        r"air ?-?space (?:disease|process)",
        r"(?:increased|interstitial|hazy|patchy) (?:markings?|densit\w*|prominence)",
        r"densit(?:y|ies)",
        r"haziness",
        r"ground[- ]glass",
        r"reticul\w*",
    ],
    "Lung Lesion": [
        r"mass(?:es)?",
        r"nodul\w*",
        r"lesions?",
        r"neoplasm\w*",
        r"tumou?rs?",
        r"carcinoma\w*",
        r"cavitary",
    ],
    "Edema": [
        r"edema",
        r"(?:heart|cardiac) failure",
        r"chf",
        r"(?:vascular|venous|pulmonary) congestion",
        r"vascular (?:prominence|engorgement|redistribution)",
        r"cephalization",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumoni\w*", r"infectio\w*", r"infectious"],
    "Atelectasis": [r"atelecta\w*", r"collapse[d]?"],
    "Pneumothorax": [r"pneumothora\w*"],
    "Pleural Effusion": [
        r"(?<!pericardial )effusions?",
        r"pleural fluid",
        r"(?:blunt\w*) (?:of )?(?:the )?(?:\w+ )?(?:costophrenic|cp) (?:angles?|sulc\w*)",
        r"(?:costophrenic|cp) (?:angles?|sulc\w*) (?:is |are )?blunt\w*",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|scarring|calcification)",
        r"pleuro-?parenchymal (?:scarring|thickening|scar)",
        r"fibrothorax",
        r"apical (?:pleural )?(?:capping|cap)",
    ],
    "Fracture": [r"fractur\w*", r"fx"],
    "Support Devices": [
        r"pacemaker",
        r"(?:monitor(?:ing)?|ecg|ekg|pacer|pacemaker|epicardial|pacing) (?:leads?|wires?)",
        r"pacer",
        r"(?:picc|central venous|central|venous|arterial|swan-ganz|port) (?:line|catheter)s?",
        r"lines?",
        r"tubes?",
        r"catheters?",
        r"(?:sternotomy|cerclage) wires?",
        r"(?:surgical |vascular )?clips",
        r"stents?",
        r"port-?a-?cath",
        r"mediport",
        r"defibrillator",
        r"icd",
        r"(?:prosthetic|replacement) valve",
        r"hardware",
        r"drains?",
        r"devices?",
    ],
}

# Phrases that carry the value themselves: (observation, value, pattern).
FIXED: list[tuple[str, int, str]] = [
    (
        "Cardiomegaly",
        UNCERTAIN,
        r"(?:upper limits? of normal|borderline)"
        r"(?: (?:heart|cardiac) (?:size|silhouette)| cardiomegaly| enlarge\w*)?",
    ),
    (
        "Cardiomegaly",
        UNCERTAIN,
        r"(?:heart|cardiac) (?:size|silhouette) (?:is |are |appears |remains )?"
        r"(?:at the )?(?:upper limits? of normal|borderline)",
    ),
    (
        "Cardiomegaly",
        NEGATIVE,
        r"(?:heart|cardiac|heart silhouette|cardiac silhouette|cardiac shadow"
        r"|heart size|cardiac size)(?: and (?:the )?\w+(?: \w+)?)? (?:is |are |appears? |remains )?"
        r"(?:\w+ )?(?:normal|within normal limits|not enlarged|unremarkable|stable in size)",
    ),
    (
        "Cardiomegaly",
        NEGATIVE,
        r"(?:normal|unremarkable|stable) (?:heart|cardiac)"
        r"(?: size| silhouette| shadow)?",
    ),
    ("Cardiomegaly", NEGATIVE, r"normal-?\s?sized? heart"),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:cardio)?mediastin\w*"
        r"(?: (?:silhouette|contours?|size|width))?(?: and (?:hilar|heart|cardiac)\w*(?: \w+)?)?"
        r" (?:is |are |appears |remains )?(?:\w+ )?"
        r"(?:normal|within normal limits|unremarkable|not widened|stable|unchanged)",
    ),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:normal|unremarkable|stable) (?:cardio)?mediastin\w*",
    ),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:heart|cardiac|hilar) and (?:cardio)?mediastin\w*"
        r"(?: \w+)? (?:is |are |appears? )?(?:normal|within normal limits|unremarkable)",
    ),
]

# --- triggers ---------------------------------------------------------------------------------

# Checked before generic negation so "cannot exclude" is not read as "no".
UNCERTAIN_PRE = [
    r"cannot (?:be )?(?:exclude\w*|ruled? out)",
    r"can not (?:be )?(?:exclude\w*|ruled? out)",
    r"(?:may|might|could|can)(?: \w+)? (?:represent|be|reflect|indicate|relate)",
    r"(?:may|might|could)",
    r"possib\w*",
    r"probabl\w*",
    r"likely",
    r"suggest\w*",
    r"suspect\w*",
    r"(?:concern|concerning|worrisome) (?:for|of)",
    r"question(?:able)?(?: of)?",
    r"(?:rule|ruled) out",
    r"r/o",
    r"versus",
    r"vs\.?",
    r"differential",
    r"consider\w*",
    r"equivocal",
    r"borderline",
    r"indeterminate",
    r"presum\w*",
    r"\?",
]
# Hedges that modify one mention; after a negation in the same clause they inherit it
# ("no focal consolidation, suspicious opacity or pneumothorax", "no line to suggest X").
INHERITING_PRE = [
    r"suspicio\w*(?: for| of)?",
    r"apparent",
    r"to (?:suggest|indicate)\w*",
]
NEGATION_PRE = [
    r"no",
    r"not",
    r"without",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"absent",
    r"resolution of",
    r"resolved",
    r"removal of",
    r"interval removal of",
    r"neither",
    r"nor",
    r"rather than",
    r"never",
]
UNCERTAIN_POST = [
    r"(?:is |are |was |were )?(?:not |cannot be |can not be |can't be )(?:\w+ )?"
    r"(?:excluded|ruled out)",
    r"(?:is |are )?(?:possible|suspected|questioned|likely|not excluded|difficult to exclude)",
    r"(?:versus|vs\.?) ",
    r"\?",
]
NEGATION_POST = [
    r"(?:is |are |has |have |was |were )(?:been )?(?:not |no longer )"
    r"(?:seen|present|identified|visualized|appreciated|evident|demonstrated|noted|visible)",
    r"(?:is |are |has |have )(?:been )?(?:resolved|removed|absent|cleared)",
    r"(?:has |have )?resolved",
    r"(?:is |are )?absent",
]
