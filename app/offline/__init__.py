"""The tour guide as a static web app that runs the model inside the browser: llama.cpp compiled to
WebAssembly (npm's @wllama/wllama) answers on the visitor's own device, and a service worker keeps
the page, the runtime, the map and the model for use with no network at all.

    python -m app.offline build --out DIR    # the site, ready for any static host
    python -m app.offline serve DIR          # preview it on http://127.0.0.1:8000/ with the headers it needs

`python -m app` serves the same site at /offline/ (app.offline.serve).
"""
