"""Neutral building blocks that every layer may use: named-axis sharding, a dense
layer with the reference's initializers, fixed sin-cos positions, and building a
module's parameters in one compiled program."""
