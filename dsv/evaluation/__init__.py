"""What DSVs are measured with, shared by stages and benchmarks: retraining under one protocol and
test accuracy (:mod:`dsv.evaluation.retraining`), the independent verifier
(:mod:`dsv.evaluation.verifier`), the naturalness measures of generated images
(:mod:`dsv.evaluation.naturalness`), the lambda statistics and plots (:mod:`dsv.evaluation.analysis`)
and the baselines a distillation is compared with (:mod:`dsv.evaluation.baselines`)."""
