"""Ray Serve deployments: one class per capability, the OpenAI gateway and the app builders."""
