"""The benchmarks' library: protocols, arms and presets, tables, claims, scoring and the
JSON-to-Markdown printers that the scripts under ``benchmarks/`` call.

This is the top layer: it may import any part of dsv (the API, the pipeline, the stages), and
nothing in dsv imports it. Each script in ``benchmarks/`` is argument parsing, calls into this
package and printing; no script imports another."""
