variable "stack" {
  description = "The stack's name."
  type        = string
}

variable "python" {
  description = "The Python interpreter that runs node.py, the node launcher."
  type        = string
}

variable "nodes" {
  description = "One entry per node (region x replica), keyed \"<region>-<replica>\"."
  type = map(object({
    region      = string
    replica     = number
    port        = number
    command     = string
    health_path = string
    cwd         = string
    env         = map(string)
    secrets     = map(string)
    gpus        = number
    workload = object({
      image        = string
      args         = list(string)
      setup        = list(string)
      model_uri    = string
      model_sha256 = string
      model_dir    = string
    })
  }))
}
