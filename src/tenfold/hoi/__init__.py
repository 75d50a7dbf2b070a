"""Human-object interaction utilities: HICO-DET evaluation."""

from tenfold.hoi.hico_eval import matlab_class_ap, qpic_evaluate, voc_ap_11

__all__ = ["matlab_class_ap", "qpic_evaluate", "voc_ap_11"]
