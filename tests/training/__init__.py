"""Trainer tests (a package so that the tests can import ``training_helpers``)."""
