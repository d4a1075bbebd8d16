"""raygen's Ray Serve face: online sampling with the families' own samplers.

    raygen serve [CONFIG] [--model NAME=CHECKPOINT_URI ...]     (serving.run)
    serve run serving/config.yaml                               (serving.app:build_app)

config.py   AppConfig: models, scaling, batching, back-pressure, limits, API key
app.py      build_app (the typed app builder) and the Gateway ingress deployment
http.py     the gateway's FastAPI app: shared routes, guards, OpenAI-style errors
model_server.py   one deployment per model: @serve.batch around a family's Sampler
apis/       one module per HTTP API (text, images), mapped from model families

Importing it starts nothing.
"""
