"""The compare report: plots (matplotlib, Agg) and one self-contained report.html."""
