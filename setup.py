from pathlib import Path

from setuptools import find_packages, setup

CONFIG_PACKAGES = ["sde_diffusion.configs"] + sorted(
    "sde_diffusion.configs." + d.name for d in Path(__file__).parent.joinpath("configs").iterdir() if d.is_dir() and d.name != "__pycache__"
)

setup(
    name="sde-diffusion",
    version="0.1.0",
    description="Score-based generative modelling with stochastic differential equations, in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["sde_diffusion", "sde_diffusion.*", "solvers", "solvers.*"]) + CONFIG_PACKAGES,
    # configs/ ships inside the package as sde_diffusion.configs (found by app.config.resolve_config_path).
    package_dir={"sde_diffusion.configs": "configs"},
    install_requires=[
        "torch>=2.0",
        "Pillow>=9.0",
        "torchdiffeq>=0.2.3",
        "scipy>=1.10",
        "numpy>=1.24",
        "ml-collections>=0.1.1",
        "absl-py>=1.0",
        "tensorboard>=2.10",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "scikit-learn>=1.2",
    ],
    extras_require={
        "dev": ["pytest>=7.0", "ruff>=0.5"],
        "diffusers": ["diffusers>=0.25", "Pillow>=9.0"],
    },
)
