"""Benchmarks: each script prints a Markdown table, writes JSON to bench/results/ and can
refresh its table in the README (`--readme`). Figures are ratios measured side by side in one
run; absolute times on a shared 2-core machine are noisy."""
