def setup(app):
    app.add_config_value("tutorials_timeout", 120, "env")
    return {"parallel_read_safe": False}
