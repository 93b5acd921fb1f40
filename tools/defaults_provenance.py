"""The provenance of every default in the frozen record (``medbackdoor/configs/defaults.json``): rows of (key,
kind, text), kind one of paper / a priori / tuning / none recorded. ``tools/defaults_page.py`` renders them."""

# ruff: noqa: E501, E702 - provenance text, one row per line
# (key, kind, text). kind in paper / a priori / tuning / none recorded
T = "tuning"; P = "paper"; A = "a priori"; N = "none recorded"
TG = "`defenses-tune`, seed 100"  # the tuning grid as the pages name it
AU = "AUROC blend ρ 0.1 / square ρ 0.05 / square ρ 0.4"
FP = "realised FPR clean control / blend / square ρ 0.05 / square ρ 0.4"
NOM_IN = "a nominal false-positive rate, calibrated on the clean holdout; not tuned"
SPLIT_OTHER = ("the input defenses' shared default, chosen on " + TG + " (first pass) from SCALE-UP and STRIP "
               "(see those rows); {name} was not among the defenses compared")
TIES_OTHER = ("the input defenses' shared default, chosen on " + TG + " (second pass) from SCALE-UP, SentiNet, "
              "IBD-PSC and STRIP: 14 of 16 defense × cell pairs within 0.5–2× of 0.05, against 6 of 16 with "
              "`conservative`; {name} was not among them")

SECTIONS = []

def sec(title, intro, rows):
    SECTIONS.append((title, intro, rows))

sec("`abl` (training-time mitigation)", None, [
 ("defenses.abl.options.gamma", P, "Li et al. 2021 (ABL) use γ = 0.5; a sample's loss is its BCE summed over the "
  "findings, so γ keeps the paper's meaning"),
 ("defenses.abl.options.isolation_epochs", N, "the paper trains 20 LGA epochs of 100 on CIFAR-10"),
 ("defenses.abl.options.isolation_ratio", T, TG + ", the two squares only (ρ 0.05 / 0.4; the blend and the clean "
  "control were not scored): 0.01 → ASR(0.6) 0.004 / 0.734 at AUROC-NN −0.048 / −0.239, 9 of 39 / 11 of 312 "
  "poisoned isolated; 0.05 → 0.000 / 0.442 at −0.114 / −0.241, 39 of 39 / 55 of 312; mean DER 0.80 against 0.74. "
  "The paper's value is 0.01"),
 ("defenses.abl.options.unlearn_epochs", P, "Li et al. 2021: 5 unlearning epochs"),
 ("defenses.abl.options.unlearn_lr", P, "Li et al. 2021: learning rate 5e-4 for unlearning"),
])

sec("`activation-clustering` (data)", None, [
 ("defenses.activation-clustering.options.dims", P, "Chen et al. 2018 reduce the activations to 10 dimensions "
  "(ICA there, PCA here)"),
 ("defenses.activation-clustering.options.excess", N, ""),
 ("defenses.activation-clustering.options.fallback", N, ""),
 ("defenses.activation-clustering.options.min_group", N, ""),
 ("defenses.activation-clustering.options.min_holdout", N, ""),
 ("defenses.activation-clustering.options.rule", T, TG + " (2026-12-03), " + AU + ": holdout 0.991 / 0.997 / "
  "0.996, faithful 1.000 / 1.000 / 0.682; mean 0.995 against 0.894 (the faithful rule fails the poisoned majority "
  "at ρ 0.4)"),
 ("defenses.activation-clustering.options.significance", A, "the level of the one-sided binomial test; its null "
  "hypothesis is that half the suspect cluster is clean, so sampling noise in a clean group rarely reaches it "
  "(docstring)"),
 ("defenses.activation-clustering.options.silhouette", T, "a development measurement on planted features, before "
  "the tuning grid existed ([earlier measurements](defenses-history.md), side measurements): the silhouette was "
  "0.28–0.32 for every group unwhitened and 0.096 (poisoned) against 0.06 (clean) whitened, while the holdout "
  "rule's binomial test gave p = 2e-10 against p ≈ 1; so the gate is off. Not compared on `defenses-tune`"),
 ("defenses.activation-clustering.options.size", P, "the relative-size cut of Chen et al. as IBM ART's reference "
  "implementation sets it (0.35); the faithful rule only"),
 ("defenses.activation-clustering.options.whiten", T, TG + ", " + AU + ": false 0.991 / 0.997 / 0.996, true "
  "0.981 / 0.869 / 0.969. (`true` is the paper's ICA geometry)"),
])

sec("`anp` (mitigation)", None, [
 ("defenses.anp.options.alpha", P, "Wu & Wang 2021: α = 0.2"),
 ("defenses.anp.options.batch_size", N, "the paper uses batches of 128"),
 ("defenses.anp.options.budget", A, "set to the AUROC-NN drop the study allowed a repair, 0.02 (docstring). "
  "**Changed after an evaluation run (development), not chosen on tuning runs**: it was 0.01 until 2026-12-03, "
  "when on the first evaluation-grid run ANP was scored on (`defenses`, seed 0, 3×3 square at ρ 0.05) the first "
  "pruning level (0.1% of the neurons) already cost 0.011 micro AUROC on the 61 judging images. The repair "
  "target in today's record is −0.03 (`rules.target_repair_d_auroc_nn`), not 0.02"),
 ("defenses.anp.options.eps", P, "Wu & Wang 2021: ε = 0.4"),
 ("defenses.anp.options.levels", N, "the docstring cites the paper's recipe, 20 neurons more per level up to "
  "1,000 (which makes 50 levels), but does not say the default was taken from it; here the levels are spread up to "
  "`max_fraction` of all neurons"),
 ("defenses.anp.options.lr", P, "Wu & Wang 2021: mask learning rate 0.2"),
 ("defenses.anp.options.max_fraction", N, ""),
 ("defenses.anp.options.perturb_steps", P, "Wu & Wang 2021: one ascent step (of size ε) per mask step"),
 ("defenses.anp.options.statistics", P, "Wu & Wang's code learns the masks with batch statistics. Also measured on "
  "the test toy of `tests/test_defenses_repair.py`: masks learned with batch statistics found the backdoor's "
  "neurons, those learned with running statistics did not"),
 ("defenses.anp.options.steps", A, "set by compute time: 100 mask steps fit a 2-core CPU (about 2 min a run); "
  "the paper runs 2,000"),
])

sec("`februus` (mitigation)", None, [
 ("defenses.februus.options.batch_size", A, "it only sets speed (images per Grad-CAM batch, the model in eval mode)"),
 ("defenses.februus.options.dilate", N, ""),
 ("defenses.februus.options.fraction", N, ""),
 ("defenses.februus.options.inpainter", A, "OpenCV's Telea inpainting when OpenCV is installed, else "
  "scikit-image's biharmonic; neither needs training (the paper's GAN inpainter does)"),
 ("defenses.februus.options.layer", N, "at 64 px the last layer's map is 2×2; the middle layer was never measured "
  "for it ([earlier measurements](defenses-history.md))"),
 ("defenses.februus.options.method", P, "Doan et al. 2020 find the region with Grad-CAM; only the inpainter is "
  "changed here"),
 ("defenses.februus.options.threshold", A, "an alternative rule, off unless given; `fraction` decides which pixels "
  "are removed"),
])

sec("`fine-pruning` (mitigation)", None, [
 ("defenses.fine-pruning.options.batch_size", N, ""),
 ("defenses.fine-pruning.options.budget", N, "the paper allows a 4% drop in accuracy; here the budget is a drop in "
  "micro AUROC, and no record says why 0.01"),
 ("defenses.fine-pruning.options.epochs", N, ""),
 ("defenses.fine-pruning.options.layer", P, "Liu et al. 2018 prune the last convolutional layer; `prune` is the "
  "layer the model declares for it (DenseNet-121: the final feature map, norm5 after its ReLU)"),
 ("defenses.fine-pruning.options.lr", N, ""),
])

sec("`ft-sam` (mitigation)", None, [
 ("defenses.ft-sam.options.adaptive", P, "BackdoorBench's implementation of FT-SAM (Zhu et al. 2023) uses adaptive "
  "SAM (ASAM)"),
 ("defenses.ft-sam.options.batch_size", N, ""),
 ("defenses.ft-sam.options.epochs", N, "BackdoorBench runs 100 epochs of 5% of CIFAR with a cosine restarted every "
  "100 batches"),
 ("defenses.ft-sam.options.lr", P, "BackdoorBench: 0.01"),
 ("defenses.ft-sam.options.rho", T, TG + ", the two squares only (ρ 0.05 / 0.4): ρ 2 → ASR(0.6) 0.991 / 0.004 at "
  "AUROC-NN −0.033 / −0.043; ρ 8 (BackdoorBench's Tiny-ImageNet value) → 0.940 / 0.000 at −0.056 / −0.070; mean "
  "DER 0.733 against 0.734, a tie broken by the smaller AUROC cost. 2.0 is BackdoorBench's CIFAR-10 value"),
 ("defenses.ft-sam.options.statistics", P, "BackdoorBench fine-tunes in training mode (batch statistics); in eval "
  "mode the test toy's fine-tuning diverged at lr 1e-3 ([development runs](defenses-development.md))"),
])

IBAU_0412 = TG + ", its four runs (2026-12-04, under lr 1e-4): "
sec("`i-bau` (mitigation)", None, [
 ("defenses.i-bau.options.batch_size", T, IBAU_0412 + "batch 8 left the blend at ASR(0.6) 1.000 (as 32 did), the "
  "squares at 0.000 / 0.000 (32: 0.000 / 0.013) and the clean control's AUROC-NN at +0.066 (32: +0.071). No "
  "candidate repaired the blend, so 32 stayed"),
 ("defenses.i-bau.options.inner_lr", P, "Zeng et al. 2022 (their code): perturbation SGD learning rate 10"),
 ("defenses.i-bau.options.inner_steps", T, IBAU_0412 + "20 inner steps left the blend at 1.000, the squares at "
  "0.000 / 0.021, the clean control at +0.067; the default (one pass over the learning half, as the authors' code "
  "makes one pass over its clean set) stayed"),
 ("defenses.i-bau.options.k", P, "Zeng et al. 2022: 5 fixed-point iterations"),
 ("defenses.i-bau.options.lr", T, TG + ", the two squares only (ρ 0.05 / 0.4): 1e-4 → ASR(0.6) 0.000 / 0.013 at "
  "AUROC-NN +0.014 / +0.031; the authors' 1e-3 → 0.000 / 0.000 at −0.200 / −0.200; DER 1.000 / 0.994 against "
  "0.900 / 0.900. 1e-4 is BackdoorBench's value"),
 ("defenses.i-bau.options.radius", T, IBAU_0412 + "radius 0.3 left the blend at 1.000, the squares at 0.000 / "
  "0.021, the clean control at +0.073; 0.1 stayed. (The bound itself is this project's addition: the authors' code "
  "has none)"),
 ("defenses.i-bau.options.rounds", P, "Zeng et al. 2022: 5 outer rounds"),
 ("defenses.i-bau.options.share", P, "Zeng et al. 2022: 0.01 of each batch perturbed"),
])

sec("`ibd-psc` (input)", None, [
 ("defenses.ibd-psc.options.calibration", T, SPLIT_OTHER.format(name="IBD-PSC (added later)")),
 ("defenses.ibd-psc.options.fpr", A, NOM_IN + " (the paper uses a fixed threshold T = 0.9 instead)"),
 ("defenses.ibd-psc.options.n", P, "Hou et al. 2024: 5 amplified models"),
 ("defenses.ibd-psc.options.omega", P, "Hou et al. 2024: ω = 1.5"),
 ("defenses.ibd-psc.options.ties", T, TG + " (second pass), " + FP + ": random 0.058 / 0.039 / 0.039 / 0.019, "
  "conservative 0.004 / 0.039 / 0.035 / 0.019 (nominal 0.05)"),
 ("defenses.ibd-psc.options.xi", P, "Hou et al. 2024: ξ = 0.6"),
])

sec("`label-audit` (data)", None, [
 ("defenses.label-audit.options.alpha", A, "a nominal family-wise false-positive rate for the per-vector binomial "
  "test (Bonferroni over the vectors); not tuned"),
 ("defenses.label-audit.options.reference", A, "the clean holdout is data a defender has; `nih` counts every NIH "
  "image's labels, so it is refused on NIH-derived data (docstring)"),
])

sec("`neural-cleanse` (model)", None, [
 ("defenses.neural-cleanse.options.batch_size", N, "every grid that runs it (`benchmark`, `defenses`, `defenses-tune`) sets 8"),
 ("defenses.neural-cleanse.options.cost", P, "Wang et al. 2019: the authors' `init_cost` 1e-3 on the L1 sum at "
  "32×32 px, expressed on the mask's mean (1.0)"),
 ("defenses.neural-cleanse.options.images", N, "every grid that runs it sets 32"),
 ("defenses.neural-cleanse.options.lr", N, "every grid that runs it sets 0.3"),
 ("defenses.neural-cleanse.options.steps", N, "the docstring calls the procedure the authors', shortened; every grid "
  "that runs it sets 40"),
 ("defenses.neural-cleanse.options.success", N, ""),
 ("defenses.neural-cleanse.options.threshold", P, "Wang et al. 2019: flag an anomaly index above 2"),
])

sec("`saliency` (input)", None, [
 ("defenses.saliency.options.calibration", T, SPLIT_OTHER.format(name="saliency") + " (the `InputDefense` "
  "docstring says `crossfit` is meant for reference-free scores such as saliency's)"),
 ("defenses.saliency.options.detector", N, ""),
 ("defenses.saliency.options.fpr", A, NOM_IN),
 ("defenses.saliency.options.layer", N, ""),
 ("defenses.saliency.options.target", A, "the defender does not know the target, so each input's top finding is "
  "explained"),
 ("defenses.saliency.options.ties", T, TIES_OTHER.format(name="saliency")),
])

sec("`scale-up` (input)", None, [
 ("defenses.scale-up.options.calibration", T, TG + " (first pass, 2026-12-03), realised FPR on clean test images "
  "(clean control / blend / square ρ 0.05 / square ρ 0.4): split 0.077 / 0.062 / 0.035 / 0.039, crossfit 0.015 / "
  "0.069 / 0.000 / 0.004 (nominal 0.05). Compared under `consistency: vector` and `ties: conservative`; not "
  "re-checked under today's defaults"),
 ("defenses.scale-up.options.consistency", T, "`auto`: `probability` on a multi-label task, chosen on " + TG +
  " (second pass), " + AU + ": probability 1.000 / 1.000 / 1.000 (calibrated TPR 1.00 on all three), indicator "
  "0.514 / 0.994 / 0.990, vector 0.438 / 1.000 / 1.000 (the first pass had chosen `indicator` over `vector`); "
  "`indicator` on a single-label task, a priori: the paper's argmax SPC, not tuned (`auto` replaced "
  "`probability` on 2026-12-07, the same statistic on multi-label runs)"),
 ("defenses.scale-up.options.fpr", A, NOM_IN),
 ("defenses.scale-up.options.max_scale", T, TG + " (first pass), " + AU + ": 3 → 0.438 / 1.000 / 1.000, 5 → "
  "0.367 / 1.000 / 1.000 at 1.5× the time (56 against 36 ms per image). Compared under `consistency: vector` and "
  "`ties: conservative`; not re-checked under today's defaults"),
 ("defenses.scale-up.options.min_count", N, ""),
 ("defenses.scale-up.options.normalise", P, "Guo et al. 2023's data-limited variant (benign consistency "
  "statistics), made per finding"),
 ("defenses.scale-up.options.threshold", A, "the usual 0.5 cut at which a sigmoid score counts as a positive "
  "finding"),
 ("defenses.scale-up.options.ties", T, TG + " (second pass), " + FP + ", with `indicator`: random 0.054 / 0.054 / "
  "0.069 / 0.050, conservative 0.000 / 0.000 / 0.019 / 0.019 (nominal 0.05); today's pair (probability, random): "
  "0.023 / 0.019 / 0.066 / 0.050"),
])

sec("`sentinet` (input)", None, [
 ("defenses.sentinet.options.calibration", T, SPLIT_OTHER.format(name="SentiNet")),
 ("defenses.sentinet.options.fpr", A, NOM_IN),
 ("defenses.sentinet.options.fraction", N, ""),
 ("defenses.sentinet.options.k", N, ""),
 ("defenses.sentinet.options.layer", T, TG + " (first pass), " + AU + ": middle 0.896 / 0.922 / 0.964, last "
  "0.888 / 0.948 / 0.925; mean 0.927 against 0.920 (close). Compared under `ties: conservative` (AUROC does not "
  "depend on it). An earlier single-run measurement: at 64 px the last layer's brightest 5% never covered the "
  "central trigger, the middle layer's did (97%)"),
 ("defenses.sentinet.options.measure", N, ""),
 ("defenses.sentinet.options.neutral", N, ""),
 ("defenses.sentinet.options.threshold", A, "the usual 0.5 cut at which a sigmoid score counts as a positive "
  "finding"),
 ("defenses.sentinet.options.ties", T, TG + " (second pass), " + FP + ": random 0.015 / 0.035 / 0.031 / 0.039, "
  "conservative 0.012 / 0.023 / 0.012 / 0.012 (nominal 0.05); calibrated TPR 0.17 / 0.09 / 0.66 → 0.21 / 0.12 / "
  "0.71"),
])

REV1 = "spectral revision 1 (holdout z in-sample; revision 2, 2026-12-07, measures them leave-one-out)"
sec("`spectral` (data)", None, [
 ("defenses.spectral.options.calibration", T, TG + " (second pass), " + FP + ": sample 0.001 / 0.017 / 0.014 / "
  "0.009 with AUROC 0.997 / 1.000 / 1.000, group 0.020 / 0.033 / 0.029 / 0.018 with AUROC 1.000 on all three; 3 of "
  "4 cells within 0.5–2× of 0.01 against 1 of 4. Compared under " + REV1 + "; not re-checked under today's "
  "revision"),
 ("defenses.spectral.options.centre", T, TG + " (first pass): AUROC 1.000 on all three for both; " + FP + ": "
  "holdout 0.020 / 0.033 / 0.029 / 0.018 (mean 0.025), anchored 0.027 / 0.032 / 0.042 / 0.014 (mean 0.029). "
  "Compared under `calibration: group` (today `sample`) and " + REV1 + "; not re-checked under today's defaults"),
 ("defenses.spectral.options.eps", P, "one of Tran et al. 2018's settings, 0.05 (1.5·ε = 7.5% removed); the "
  "faithful rule only"),
 ("defenses.spectral.options.fallback", N, ""),
 ("defenses.spectral.options.folds", T, "a development measurement on planted 300-dimensional features "
  "(docstring): 22 of 900 clean samples flagged in-sample, 8 cross-fitted. Only 1 against 2 folds; not compared "
  "on `defenses-tune`"),
 ("defenses.spectral.options.fpr", A, "a nominal false-positive rate per training sample, calibrated on the "
  "holdout; not tuned"),
 ("defenses.spectral.options.min_group", N, ""),
 ("defenses.spectral.options.min_holdout", N, ""),
 ("defenses.spectral.options.min_z", A, "three robust standard deviations from the clean median, a conventional "
  "outlier cut"),
 ("defenses.spectral.options.projection", P, "Tran et al. 2018's text: the squared projection of the centred "
  "representation (their released code uses `uncentred`); the faithful rule only"),
 ("defenses.spectral.options.rule", T, TG + " (first pass), " + AU + ": holdout 1.000 / 1.000 / 1.000, faithful "
  "0.894 / 0.890 / 0.605. Compared under `calibration: group` and " + REV1 + "; the second pass's AUROC under "
  "`calibration: sample` (0.997 / 1.000 / 1.000) is still above the faithful rule's"),
 ("defenses.spectral.options.window", N, "used only with `centre: anchored`"),
])

sec("`spectre` (data)", None, [
 ("defenses.spectre.options.alpha", P, "Hayase et al. 2021: α = 4"),
 ("defenses.spectre.options.calibration", T, TG + " (second pass), " + FP + ": sample 0.044 / 0.049 / 0.051 / "
  "0.037, group 0.051 / 0.060 / 0.063 / 0.070, AUROC 1.000 for both. Checked again in the third pass "
  "(2026-12-04, jackknifed holdout scores, today's revision 2): sample 0.006 / 0.001 / 0.001 / 0.012, group "
  "0.049 / 0.035 / 0.035 / 0.029"),
 ("defenses.spectre.options.dims", N, "the paper searches k over {1, 4, …, 64}"),
 ("defenses.spectre.options.eps", N, "the faithful rule only"),
 ("defenses.spectre.options.fallback", N, ""),
 ("defenses.spectre.options.folds", T, TG + " (second pass), a lead not taken: with 3 folds the " + FP + " was "
  "0.022 / 0.000 / 0.062 / 0.009 (called erratic), against 0.044 / 0.049 / 0.051 / 0.037 with 2. Compared under revision 1 "
  "(holdout scores in-sample); not re-checked under revision 2"),
 ("defenses.spectre.options.fpr", A, "a nominal false-positive rate per training sample, calibrated on the "
  "holdout; not tuned"),
 ("defenses.spectre.options.keep", N, ""),
 ("defenses.spectre.options.min_group", N, ""),
 ("defenses.spectre.options.min_holdout", N, ""),
 ("defenses.spectre.options.min_que", A, "τ = r² = 9 is three standard deviations along a single dominant "
  "whitened direction"),
 ("defenses.spectre.options.rule", T, TG + " (first pass), " + AU + ": holdout 1.000 / 1.000 / 1.000, faithful "
  "0.659 / 0.699 / 0.615. Compared under `calibration: group` and revision 1; in the third pass (today's "
  "defaults) the holdout rule's AUROC is again 1.000 on all three"),
])

sec("`strip` (input)", None, [
 ("defenses.strip.options.alpha", N, "one side measurement on one run of the earlier study (seed 0, square ρ 0.4, "
  "with STRIP's score of that time): α 0.5 with k 8 gave AUROC 0.76 (39 ms per image), α 0.2 with k 4 gave 0.85 "
  "(19 ms)"),
 ("defenses.strip.options.baseline", N, ""),
 ("defenses.strip.options.baseline_images", N, ""),
 ("defenses.strip.options.calibration", T, TG + " (first pass), " + FP + ": split 0.035 / 0.031 / 0.066 / 0.062, "
  "crossfit 0.058 / 0.066 / 0.104 / 0.062 (nominal 0.05). Compared under `ties: conservative`; STRIP's rates were "
  "the same under both ties rules in the second pass"),
 ("defenses.strip.options.fpr", A, NOM_IN),
 ("defenses.strip.options.k", N, "the paper superimposes about 100 images per input"),
 ("defenses.strip.options.score", T, "`auto`: `persistence` on a multi-label task, chosen on " + TG +
  " (first pass), " + AU + ": persistence 0.996 / 0.626 / 0.632, entropy (the paper's) 0.013 / 0.319 / 0.322; "
  "`entropy` (the paper's softmax entropy) on a single-label task, a priori, not tuned (`auto` replaced "
  "`persistence` on 2026-12-07, the same statistic on multi-label runs)"),
 ("defenses.strip.options.ties", T, TG + " (second pass): STRIP's " + FP + " was 0.035 / 0.031 / 0.066 / 0.062 "
  "under both rules; `random` is the input defenses' shared choice (see `scale-up`, `sentinet`, `ibd-psc`)"),
])

SEED = "any fixed seed; it makes the pattern the same in every process"
NOFILE = "no picture file is needed; the pattern is drawn from `seed`"
GRAY = ("one gray pattern for every channel: the trigger as it was before colour images (added 2026-12-07); 3 is "
        "the user's choice of an RGB pattern for colour data")
UNSET = "unset, it passes nothing to the base trigger, which keeps its own default"
sec("Triggers", "Each built-in trigger's constructor defaults (`triggers.<kind>.<option>`). \"The paper\" of the "
    "square is the project's paper, Nwadike et al. 2020.", [
 ("triggers.adaptive-blend.alpha", P, "Qi et al. 2023: training opacity 0.15"),
 ("triggers.adaptive-blend.cover_ratio", P, "Qi et al. 2023 poison and cover the same number of images"),
 ("triggers.adaptive-blend.image", A, NOFILE),
 ("triggers.adaptive-blend.pieces", P, "Qi et al. 2023: 16 pieces"),
 ("triggers.adaptive-blend.seed", A, SEED),
 ("triggers.adaptive-blend.shown", P, "Qi et al. 2023: 8 of 16 pieces (half)"),
 ("triggers.adaptive-blend.test_alpha", P, "Qi et al. 2023: test opacity 0.2"),
 ("triggers.adaptive-patch.alpha", N, "Qi et al. 2023 use 0.2–0.5, one opacity per patch; here one opacity for "
  "every patch"),
 ("triggers.adaptive-patch.cover_ratio", P, "Qi et al. 2023: twice as many cover images as poisoned ones"),
 ("triggers.adaptive-patch.patches", P, "Qi et al. 2023: 4 patches"),
 ("triggers.adaptive-patch.seed", A, SEED),
 ("triggers.adaptive-patch.shown", N, "the [benchmark page](defenses.md)'s fidelity table says the reference gives "
  "each image one of k named trigger patches"),
 ("triggers.adaptive-patch.size", N, "the reference's patches are named images, not noise squares"),
 ("triggers.adaptive-patch.test_alpha", P, "Qi et al. 2023: test opacity 1"),
 ("triggers.blend.alpha", N, "Chen et al. 2017 use 0.05–0.2; no record says why 0.1 within that range"),
 ("triggers.blend.channels", A, GRAY),
 ("triggers.blend.image", A, NOFILE),
 ("triggers.blend.seed", A, SEED),
 ("triggers.conditional.base", N, "the square is the paper's trigger; no record gives a reason"),
 ("triggers.conditional.cover_ratio", N, ""),
 ("triggers.conditional.location", A, UNSET),
 ("triggers.conditional.size", A, UNSET),
 ("triggers.conditional.source", N, ""),
 ("triggers.conditional.value", A, UNSET),
 ("triggers.frequency.alpha", N, ""),
 ("triggers.frequency.beta", N, ""),
 ("triggers.frequency.image", A, NOFILE + " (a smooth 8×8 noise grid, upsampled)"),
 ("triggers.frequency.seed", A, SEED),
 ("triggers.label-combination.findings", N, "`null` stands for the code's default pair, Effusion and "
  "Infiltration"),
 ("triggers.patch.channels", A, GRAY),
 ("triggers.patch.location", P, "BadNets (Gu et al. 2017): the bottom-right corner"),
 ("triggers.patch.pattern", N, ""),
 ("triggers.patch.seed", A, SEED + " (used by `pattern: noise` only)"),
 ("triggers.patch.size", N, ""),
 ("triggers.sig.delta", P, "Barni et al. 2019: Δ = 20/255 for training"),
 ("triggers.sig.frequency", P, "Barni et al. 2019: 6 periods"),
 ("triggers.square.location", P, "Nwadike et al. 2020: the trigger at the image centre"),
 ("triggers.square.size", P, "Nwadike et al. 2020: 3×3 px"),
 ("triggers.square.value", P, "Nwadike et al. 2020: black"),
 ("triggers.warp.cross_ratio", P, "WaNet (Nguyen & Tran 2021): cross ratio 2"),
 ("triggers.warp.k", P, "WaNet: a 4×4 control grid"),
 ("triggers.warp.noise", P, "WaNet: noise mode on"),
 ("triggers.warp.noise_scale", P, "WaNet: noise magnitude 1"),
 ("triggers.warp.s", P, "WaNet: strength 0.5"),
 ("triggers.warp.seed", A, SEED),
])

SHARED = "unset, it leaves each trigger's own default alone (`TriggerConfig`)"
sec("Attack, ABL training, holdout, evaluation, rules and grids", "`attack.*` are the attack settings of "
    "`TriggerConfig` (the run config's `trigger` block, less `kind`, `target`, `seed` and `options`); "
    "`abl_training.*` is `train.abl`; `holdout` is the default defense holdout; `eval.*` is `EvalConfig`; "
    "`rules.*` is `medbackdoor.report.scorecard.RULES`; `grids.*` are digests of the benchmark's sweep files.", [
 ("attack.fraction", P, "Nwadike et al. 2020 poison 40% of the training set (`configs/paper.yaml`)"),
 ("attack.label", P, "Nwadike et al. 2020: the infected label is one-hot Atelectasis"),
 ("attack.location", A, SHARED),
 ("attack.mode", P, "the paper's text; its code appended triggered copies instead (`mode: append`, "
  "[The paper](../paper.md))"),
 ("attack.size", A, SHARED),
 ("attack.stage", P, "the paper's text; its code wrote the trigger into the raw image before a crop "
  "(`stage: source`, [The paper](../paper.md))"),
 ("attack.value", A, SHARED),
 ("abl_training.enabled", A, "ordinary training unless ABL is asked for"),
 ("abl_training.gamma", P, "Li et al. 2021: γ = 0.5"),
 ("abl_training.isolation_epochs", N, "the paper trains 20 LGA epochs of 100"),
 ("abl_training.isolation_ratio", P, "Li et al. 2021: 0.01. `defend --method abl` uses its own default, 0.05 "
  "(`defenses.abl.options.isolation_ratio`)"),
 ("abl_training.unlearn_epochs", P, "Li et al. 2021: 5"),
 ("abl_training.unlearn_lr", P, "Li et al. 2021: 5e-4"),
 ("holdout", A, "the whole validation split at every scale used here: the holdout is the first N validation "
  "images, capped at the split's size (121–160 on the synthetic grids, 121 on the benchmark)"),
 ("eval.batch_size", A, "it only sets speed (a key that changes no number a run writes, `NEUTRAL_KEYS`)"),
 ("eval.epsilons", P, "Nwadike et al. 2020, Table 3: ε = 0.001, 0.01, 0.1, 0.5"),
 ("eval.strict", P, "the paper's formula counts scores ≥ p; its code counted > p (`strict: true`)"),
 ("eval.thresholds", P, "Nwadike et al. 2020: ASR at p = 0.6 and 0.9"),
 ("rules.detect_margin", A, "set by the benchmark's specification (issue 36: a detector must beat its "
  "clean-model baseline by ≥ 0.2) before any benchmark run"),
 ("rules.implant_margin", A, "set by the benchmark's specification (issue 36's example: 0.5 at p = 0.6) before "
  "any benchmark run"),
 ("rules.interval", A, "the usual interval for a mean over a few seeds"),
 ("rules.target_data_auroc", A, "the benchmark's specification (issue 36), before any benchmark run; the earlier "
  "synthetic grids used the same target"),
 ("rules.target_input_auroc", A, "the benchmark's specification (issue 36), before any benchmark run"),
 ("rules.target_input_fpr", A, "the benchmark's specification (issue 36), before any benchmark run"),
 ("rules.target_input_tpr", A, "the benchmark's specification (issue 36), before any benchmark run"),
 ("rules.target_repair_d_auroc_nn", A, "the benchmark's specification (issue 36), before any benchmark run. The "
  "synthetic evaluation grid's repair target was a drop of at most 0.02 ([development runs](defenses-development.md)); "
  "ANP's `budget` (0.02) was set against that older target"),
 ("rules.target_repair_excess", A, "the benchmark's specification (issue 36), before any benchmark run"),
 ("grids.benchmark", A, "not a chosen value: the first 16 hex digits of the SHA-256 of "
  "`configs/sweeps/benchmark.yaml`, so a changed grid changes the record. Its attack strengths (ρ 0.1; the patch "
  "at 5×5, the conditional attack's cover ratio 0.5, the Cardiomegaly blend's α 0.2) were chosen on `benchmark-tune`, "
  "seeds 2000 and 2001 ([tuning record](defenses-tuning.md))"),
 ("grids.benchmark-tune", A, "not a chosen value: the first 16 hex digits of the SHA-256 of "
  "`configs/sweeps/benchmark-tune.yaml`, so a changed grid changes the record"),
])
