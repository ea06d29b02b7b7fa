# confwatch.conf: rendered by adaptercar's companion from examples/demo/confwatch.conf.tpl and
# the files in examples/demo/values/ (file name = key). Edit those, not this file.
greeting = {greeting}
max_sessions = {max_sessions}
