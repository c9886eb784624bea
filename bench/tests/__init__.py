"""Tests of the benchmarks' own code: their arithmetic, reports and scale-out runs."""
