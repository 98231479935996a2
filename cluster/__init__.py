"""Representation clustering: features of a trained model, k-means, and the clusters.csv format."""
