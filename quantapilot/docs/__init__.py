"""Documentation of a repository: generated Markdown pages, doc lint, HTML rendering and the page store.

Import from the module that does the work; this package re-exports nothing, so each name has one home.
"""
