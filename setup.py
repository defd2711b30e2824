from setuptools import setup

setup(
    name="anoise",
    version="0.1.0",
    description="Adaptive noise injection for stochastic student networks, with fused kernels",
    python_requires=">=3.10",
    packages=["anoise", "anoise.demo", "anoise.kernels"],
    package_dir={"anoise": "anoise", "anoise.kernels": "kernels"},
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "test": ["pytest", "scipy", "hypothesis", "pytest-benchmark", "ruff", "mlxtend",
                 "scikit-learn", "matplotlib", "tqdm"],
        "demo": ["mlxtend", "scikit-learn", "matplotlib", "tqdm"],
        "triton": ["triton>=3.4"],
    },
)
