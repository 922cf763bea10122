"""soap: a reproducible study of feedback alignment against backpropagation.

Data flows one way: config -> populations (soap.population) -> runs tables (soap.tables)
-> estimates (soap.analysis) -> figures (soap.plots) -> report (soap.report).
"""

__version__ = "0.1.0"
