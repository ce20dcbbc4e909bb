"""A repository's files read as data (never a path out) and the YAML limits every repository-supplied document obeys.

Import from the module that does the work; this package re-exports nothing, so each name has one home.
"""
