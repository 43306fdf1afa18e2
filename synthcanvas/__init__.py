"""SynthCanvas: a procedural miniature of UnlearnCanvas (arXiv 2402.11846) — objects × styles that a tiny
diffusion model can learn and a small classifier can recognise, so erasure can be measured without any
downloaded data or weights."""
