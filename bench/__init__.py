"""Benchmarks: each script prints a Markdown table, writes JSON to bench/results/ and can
refresh its table (and plot) on docs/benchmarks.md (`--docs`). Figures are ratios measured
side by side in one run; absolute times on a shared 2-core machine are noisy."""
