# confwatch.conf: rendered by adaptercar's companion from examples/demo/confwatch.conf.tpl and
# the files in examples/demo/values/ (file name = key), overridden by those in the demo's
# .demo/values/. Edit those, not this file.
greeting = {greeting}
max_sessions = {max_sessions}
