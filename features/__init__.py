"""Handcrafted image features as scikit-learn estimators: preprocessing, breast mask, texture statistics."""
