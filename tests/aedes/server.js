// A bare aedes broker for the tests: `node server.js <port>`, listening on
// 127.0.0.1, in-memory persistence, anyone may connect. Prints "listening"
// once it accepts connections. `AEDES_DIR` names the directory whose
// node_modules holds aedes (scripts/test.sh installs it under target/).
'use strict'

const path = require('node:path')
const net = require('node:net')

const dir = process.env.AEDES_DIR || path.join(__dirname, '..', '..', 'target', 'aedes')
const { Aedes } = require('node:module').createRequire(path.join(dir, 'package.json'))('aedes')

async function main () {
  const port = Number(process.argv[2])
  if (!Number.isInteger(port) || port <= 0) {
    console.error('usage: node server.js <port>')
    process.exit(2)
  }
  const broker = await Aedes.createBroker()
  broker.on('clientError', (client, err) => {
    console.log(`client ${client.id} error: ${err.message}`)
  })
  broker.on('client', (client) => console.log(`client ${client.id} connected`))
  broker.on('clientDisconnect', (client) => console.log(`client ${client.id} disconnected`))
  const server = net.createServer(broker.handle)
  server.on('error', (err) => {
    console.error(`server error: ${err.message}`)
    process.exit(1)
  })
  server.listen(port, '127.0.0.1', () => console.log('listening'))
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
