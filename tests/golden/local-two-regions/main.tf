# The local target: each node is a real process running serve.command, started by
# local-exec and stopped by a destroy-time provisioner. No provider is downloaded.
# User values reach node.py as environment variables, never as shell or HCL text.

locals {
  run_dir = abspath("${path.module}/nodes")
}

resource "terraform_data" "node" {
  for_each = var.nodes

  # A change to what runs on a node restarts it (destroy, then create).
  triggers_replace = {
    command  = each.value.command
    port     = each.value.port
    cwd      = each.value.cwd
    env      = each.value.env
    secrets  = each.value.secrets
    workload = each.value.workload
  }

  # What the destroy-time provisioner needs: it may only read self.
  input = {
    key      = each.key
    python   = var.python
    launcher = abspath("${path.module}/node.py")
    run_dir  = local.run_dir
  }

  provisioner "local-exec" {
    # -S: the launcher needs nothing from site-packages, and skipping site saves a few ms per node.
    interpreter = [var.python, "-S", abspath("${path.module}/node.py"), "start"]
    command     = each.key
    environment = {
      MLINFRA_STACK    = var.stack
      MLINFRA_NODE     = each.key
      MLINFRA_COMMAND  = each.value.command
      MLINFRA_PORT     = tostring(each.value.port)
      MLINFRA_CWD      = each.value.cwd
      MLINFRA_NODE_ENV = jsonencode(each.value.env)
      MLINFRA_SECRETS  = jsonencode(each.value.secrets)
      MLINFRA_RUN_DIR  = local.run_dir
      # serve.image, serve.setup, [model]: data for workload.py; the model cache is the stack's.
      MLINFRA_WORKLOAD    = jsonencode(each.value.workload)
      MLINFRA_MODEL_CACHE = abspath("${path.module}/models")
      MLINFRA_GPUS        = tostring(each.value.gpus)
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = [self.input.python, "-S", self.input.launcher, "stop"]
    command     = self.input.key
    environment = {
      MLINFRA_RUN_DIR = self.input.run_dir
    }
  }
}
