"""Send one demand forecast request to every node of a deployed stack (the Python API at work)."""

import json
import sys
import urllib.request

from mlinfra import Stack

stack = Stack.load(sys.argv[1] if len(sys.argv) > 1 else "mlinfra.toml")
request = {"instances": [{"hour": 18, "day_of_week": 4, "price": 9.5, "promo": 1, "temperature": 21.0}]}
for node in stack.status().nodes:
    post = urllib.request.Request(node.endpoint + "/predict", data=json.dumps(request).encode(),
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=10) as response:
        print(f"{node.name}: POST /predict {json.dumps(request)} -> {response.read().decode()}")
