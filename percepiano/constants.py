"""Every fixed name and number of the original model, data and protocol, in one place.

Values come from the original code at commit e672299 (``virtuoso/virtuoso/``: ``model_m2pf.py``,
``utils.py``, ``train_m2pf.py``, ``ymls/shared/label19/han_bigger256_concat.yml`` and the scripts under
``scripts/``) and from the processed dataset; ``docs/original.md`` explains each of them.
"""
from __future__ import annotations

# ------------------------------------------------------------------ model
# What the model pools at its top (``VirtuosoNetMultiLevel(multi_level=...)``); the published HAN is "measure".
LEVELS = ("note", "voice", "beat", "measure", "total_note_cat")
# The levels whose pooled sequence is note-long and goes through ``pool_contractor`` first.
CONTRACTED_LEVELS = ("note", "voice", "total_note_cat")
# Where a beat or measure node starts: ``utils.find_boundaries_batch`` (original) wants a step of exactly 1.
BOUNDARY_RULES = ("diff_eq_1", "diff_gt_0")
# Initialisation schemes; ``pytorch_default`` is the original (no explicit init anywhere).
INITS = ("pytorch_default", "orthogonal_lstm", "xavier_attention")

# ------------------------------------------------------------------ data
# The note-location arrays of a sample (``ScorePerformDataset.__getitem__``'s ``note_locations`` dict).
LOCATION_KEYS = ("beat", "measure", "section", "voice")
# Indices whose consecutive notes differ by 0 or +1 inside a segment (the original pipeline makes them so).
CONTIGUOUS_KEYS = ("beat", "measure", "section")
# The note locations each model level reads.
LEVEL_LOCATIONS: dict[str, tuple[str, ...]] = {
    "note": (),
    "voice": ("voice",),
    "beat": ("voice", "beat"),
    "measure": ("voice", "beat", "measure"),
    "total_note_cat": ("voice", "beat", "measure"),
}
INPUT_DIM = 101  # per-note input features of the processed data
# The largest voice number accepted (data validation and the model's input checks). The original runs its voice
# LSTM once per number from 1 to the batch's largest, and ours batches over them ((B, N, max voice) masks), so an
# absurd number (2**31 - 1) asks for gigabytes. The processed data's largest is 7 (MusicXML voices: 1-4 on the
# upper staff, 5-8 on the lower); 64 leaves room for scores with many staves and voices.
MAX_VOICE = 64
# Which input columns each model reads: the HAN and Bi-LSTM + SA read all 101, the Bi-LSTM baseline the 9
# performance-only ones (the original writes separate ``*_perffeatonly*`` feature files; their columns equal
# dims 92-100 of the full features).
FEATURE_SETS: dict[str, tuple[int, ...]] = {
    "full": tuple(range(INPUT_DIM)),
    "performance_only": tuple(range(92, INPUT_DIM)),
}
# The 19 labels in the order of the label vectors (the original's ``LABEL_LIST19``; the processed data's
# ``label_names``), each with its category and scale ends: a rating of 1 means the first word, 7 the second.
LABELS = (
    ("Timing_Stable_Unstable", "Timing", "stable", "unstable"),
    ("Articulation_Long_Short", "Articulation", "long", "short"),
    ("Articulation_Soft_cushioned_Hard_solid", "Articulation", "soft/cushioned", "hard/solid"),
    ("Pedal_Sparse/dry_Saturated/wet", "Pedal", "sparse/dry", "saturated/wet"),
    ("Pedal_Clean_Blurred", "Pedal", "clean", "blurred"),
    ("Timbre_Even_Colorful", "Timbre", "even", "colorful"),
    ("Timbre_Shallow_Rich", "Timbre", "shallow", "rich"),
    ("Timbre_Bright_Dark", "Timbre", "bright", "dark"),
    ("Timbre_Soft_Loud", "Timbre", "soft", "loud"),
    ("Dynamic_Sophisticated/mellow_Raw/crude", "Dynamic", "sophisticated/mellow", "raw/crude"),
    ("Dynamic_Little_dynamic_range_Large_dynamic_range", "Dynamic", "little dynamic range", "large dynamic range"),
    ("Music_Making_Fast_paced_Slow_paced", "Music making", "fast-paced", "slow-paced"),
    ("Music_Making_Flat_Spacious", "Music making", "flat", "spacious"),
    ("Music_Making_Disproportioned_Balanced", "Music making", "disproportioned", "balanced"),
    ("Music_Making_Pure_Dramatic/expressive", "Music making", "pure", "dramatic/expressive"),
    ("Emotion_&_Mood_Optimistic/pleasant_Dark", "Emotion & mood", "optimistic/pleasant", "dark"),
    ("Emotion_&_Mood_Low_Energy_High_Energy", "Emotion & mood", "low energy", "high energy"),
    ("Emotion_&_Mood_Honest_Imaginative", "Emotion & mood", "honest", "imaginative"),
    ("Interpretation_Unsatisfactory/doubtful_Convincing", "Interpretation", "unsatisfactory/doubtful", "convincing"),
)
LABEL_NAMES = tuple(name for name, _, _, _ in LABELS)
NUM_LABELS = len(LABEL_NAMES)  # ``--num_labels 19``
# Labels are ratings 1..7 divided by 7: in (0, 1], the model's sigmoid range.
RATING_SCALE = (1, 7)
DATA_ENV = "PERCEPIANO_DATA"  # environment variable naming the processed npz

# ------------------------------------------------------------------ protocol
# Split schemes of the processed data (``<scheme>_split`` arrays; the original's 4-fold json files), which every
# dataset file has, and ours: "work" (percepiano/splits.py), where no work is in two of train, valid and test.
SHIPPED_SPLIT_SCHEMES = ("composition", "performer")
SPLIT_SCHEMES = (*SHIPPED_SPLIT_SCHEMES, "work")
# The split whose test size the work split's test part matches (percepiano.splits.work_split).
WORK_SPLIT_REFERENCE = "composition"
PARTS = {"train": 0, "valid": 1, "test": 2}  # codes in the ``<scheme>_split`` arrays
N_FOLDS = 4  # every split scheme has 4 folds; the paper reports the mean over the 4 fold models
PROTOCOL_EPOCHS = 100  # ``--epochs 100`` in every training script
# Which feature set each neural preset reads.
PRESET_FEATURES: dict[str, str] = {"han": "full", "bilstm": "performance_only", "bilstm_sa": "full"}
# Non-neural baselines run by ``percepiano cv`` beside the neural presets (ours; the original has none).
BASELINES = ("mean", "ridge")

# ------------------------------------------------------------------ rounds (``percepiano round``; ours)
# CPU threads of each round task on a machine without GPUs: several 1-thread tasks side by side train more
# folds per hour than one task with every thread (docs/results.md#round-throughput-on-cpu).
ROUND_CPU_THREADS_PER_TASK = 1
# A round task's share of a GPU where the cluster has GPUs: 4 folds on one GPU (one batch-8 fold is far from
# filling it; percepiano cv --parallel-folds makes the same point).
ROUND_GPUS_PER_TASK = 0.25
# How many times Ray restarts a task whose worker died (killed, out of memory, node lost); it resumes from last.pt.
ROUND_MAX_RETRIES = 3

# ------------------------------------------------------------------ comparisons (``gate``, ``report``; ours)
# Allowed shortfall below a published target when neither --tolerance nor the targets file gives one.
DEFAULT_TOLERANCE = 0.02
# The largest drop of mean test R² a round may show and still be "not worse" than the previous one. The smallest
# gap between two published models on one split is 0.049 (performer: han 0.285, bilstm 0.236); a margin below
# half of it means a round judged not worse cannot have lost what separates two published models. Test-segment
# noise alone allows it: on the performer split a single seed's minimum detectable effect is about 0.011
# (docs/debugging_rounds.md#the-margin).
DEFAULT_MARGIN = 0.02
# The baseline a run must beat (the stronger of BASELINES).
BASELINE_PRESET = "ridge"
# How test segments are grouped for the bootstrap (docs/debugging_rounds.md#clusters):
# excerpt: the performances of one score excerpt (the unit the composition split holds out);
# performer: one player of one composer (the unit the performer split holds out; only 4 in its test set);
# excerpt+performer: both at once, crossed (each replicate draws excerpts and performers independently and a
#   segment's weight is the product of its two counts; conservative);
# segment: no clustering (independent segments; too narrow when segments are correlated).
CLUSTERINGS = ("excerpt", "performer", "excerpt+performer", "segment")
DEFAULT_CLUSTERING = "excerpt"
DEFAULT_RESAMPLES = 2000  # replicates: percentile bounds at 0.95 move by about 0.1 SE between RNG seeds
DEFAULT_LEVEL = 0.95  # two-sided interval level
SEED_RANGE = range(2**32)  # the seeds numpy accepts (np.random.seed): training seeds random, numpy and torch with it
BOOTSTRAP_SEED = 0  # fixed, so that the same inputs always give the same interval and verdict
POWER = 0.8  # the power of the planning figures (minimum detectable effect, seeds needed)
MAX_PLANNED_SEEDS = 1000  # seeds_needed answers "more than this" beyond it
