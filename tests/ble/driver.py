#!/usr/bin/python3
"""Drives python-dbusmock's `bluez5` template for tests/ble.rs.

Runs against the mock on the bus named by DBUS_SYSTEM_BUS_ADDRESS. Adds
adapter hci0 and three devices:

- A4:C1:38:00:00:01 "BTH-thermo": BTHome v2 service data, 25.00 °C and
  50.55 %, the packet id going up by one each round;
- C4:00:00:00:00:02 "Ruuvi 0002": Ruuvi data format 5 (the specification's
  valid-data vector), the measurement sequence going up each round;
- A4:C1:38:00:00:04 "BTH-vault": encrypted BTHome v2, when the test
  passes the service data in FIELDGATE_TEST_SEALED (hex payloads, comma
  separated): the first at start, then one more each round, the last one
  repeated once they run out;
- AA:BB:CC:DD:EE:03 "HR-strap": GATT, a heart rate measurement (0x180D /
  0x2A37, read + notify), a battery level (0x180F / 0x2A19, read, 87) and
  a setpoint (0xFFF0 / 0xFFF1, read + write, i16 LE, 0xD2 0x00 = 210).

Prints `ready` once the objects exist. Once a client discovers, it
advertises a round every 0.3 s. With FIELDGATE_TEST_STALL set, the
adverts stop after six rounds, as a BlueZ scan that dies does, and come
back, with `restart`, once the client calls StartDiscovery again, or with
`power`, only once the client has turned the adapter off and on. Once the client subscribes to the heart
rate, it notifies 60, 61, 62, then drops the connection (Connected false),
and after the client has connected and subscribed again notifies 90, 91, …
until it is killed.

The template's pitfalls are worked around as in shared/testbeds/ble-mock:
ManufacturerData/ServiceData are set again with their right types through
Properties.Set (which also emits PropertiesChanged from the mock itself),
Connect sets ServicesResolved, GATT objects get introspectable names and a
dummy method, and InterfacesAdded is emitted by hand.
"""
import os
import sys
import time

import dbus

bus = dbus.bus.BusConnection(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
MOCK = 'org.freedesktop.DBus.Mock'
BLUEZ_MOCK = 'org.bluez.Mock'
DEV = 'org.bluez.Device1'
ADP = 'org.bluez.Adapter1'
SVC = 'org.bluez.GattService1'
CHR = 'org.bluez.GattCharacteristic1'
OM = 'org.freedesktop.DBus.ObjectManager'
PROPS = dbus.PROPERTIES_IFACE
V = dict(variant_level=1)


def log(*a):
    print(*a, flush=True)


def obj(path):
    return bus.get_object('org.bluez', path)


def uuid16(short):
    return '0000%04x-0000-1000-8000-00805f9b34fb' % short


def byte_array(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature='y')


def mfr(company, data):
    return dbus.Dictionary({dbus.UInt16(company): byte_array(data)}, signature='qv', **V)


def svcdata(uuid, data):
    return dbus.Dictionary({uuid: byte_array(data)}, signature='sv', **V)


def setprop(path, iface, name, value):
    obj(path).Set(iface, name, value, dbus_interface=PROPS)


def getprop(path, iface, name):
    return obj(path).Get(iface, name, dbus_interface=PROPS)


for _ in range(100):
    if bus.name_has_owner('org.bluez'):
        break
    time.sleep(0.1)
else:
    sys.exit('org.bluez never appeared')

root = obj('/')
adapter = root.AddAdapter('hci0', 'fieldgate-test', dbus_interface=BLUEZ_MOCK)
bthome = root.AddDevice('hci0', 'A4:C1:38:00:00:01', 'BTH-thermo', dbus_interface=BLUEZ_MOCK)
ruuvi = root.AddDevice('hci0', 'C4:00:00:00:00:02', 'Ruuvi 0002', dbus_interface=BLUEZ_MOCK)
strap = root.AddDevice('hci0', 'AA:BB:CC:DD:EE:03', 'HR-strap', dbus_interface=BLUEZ_MOCK)
SEALED = [bytes.fromhex(h) for h in os.environ.get('FIELDGATE_TEST_SEALED', '').split(',') if h]
vault = None
if SEALED:
    vault = root.AddDevice('hci0', 'A4:C1:38:00:00:04', 'BTH-vault', dbus_interface=BLUEZ_MOCK)

RUUVI_V5 = bytes.fromhex('0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F')


def bthome_payload(packet_id):
    # device info 0x40 (v2, unencrypted), packet id, 25.00 °C, 50.55 %
    return [0x40, 0x00, packet_id & 0xFF, 0x02, 0xC4, 0x09, 0x03, 0xBF, 0x13]


def ruuvi_payload(sequence):
    data = bytearray(RUUVI_V5)
    data[16:18] = (sequence & 0xFFFF).to_bytes(2, 'big')
    return list(data)


def advertise(round_no):
    setprop(bthome, DEV, 'ServiceData', svcdata(uuid16(0xFCD2), bthome_payload(round_no)))
    setprop(bthome, DEV, 'RSSI', dbus.Int16(-50 - round_no % 5, **V))
    setprop(ruuvi, DEV, 'ManufacturerData', mfr(0x0499, ruuvi_payload(205 + round_no)))
    setprop(ruuvi, DEV, 'RSSI', dbus.Int16(-60 - round_no % 5, **V))
    if vault:
        payload = SEALED[min(round_no, len(SEALED) - 1)]
        setprop(vault, DEV, 'ServiceData', svcdata(uuid16(0xFCD2), list(payload)))


# The template declares these one array level too deep: set them right.
advertise(0)
setprop(strap, DEV, 'ManufacturerData', mfr(0xFFFF, [0x01]))
setprop(strap, DEV, 'ServiceData', svcdata(uuid16(0xFE95), [0x02]))

for dev in (bthome, ruuvi, strap):
    obj(dev).AddMethod(DEV, 'Connect', '', '',
        "self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True, variant_level=1),"
        " 'ServicesResolved': dbus.Boolean(True, variant_level=1)})", dbus_interface=MOCK)
    obj(dev).AddMethod(DEV, 'Disconnect', '', '',
        "self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(False, variant_level=1),"
        " 'ServicesResolved': dbus.Boolean(False, variant_level=1)})", dbus_interface=MOCK)


def add_service(path, short):
    root.AddObject(path, SVC, {
        'UUID': dbus.String(uuid16(short), **V),
        'Primary': dbus.Boolean(True, **V),
        'Device': dbus.ObjectPath(strap, **V),
        'Includes': dbus.Array([], signature='o', **V),
    }, [('MockNoop', '', '', '')], dbus_interface=MOCK)
    emit_added(path, SVC)


def add_characteristic(path, service, short, value, flags):
    methods = [
        ('ReadValue', 'a{sv}', 'ay', "ret = self.props['org.bluez.GattCharacteristic1']['Value']"),
        ('WriteValue', 'aya{sv}', '',
         "self.UpdateProperties('org.bluez.GattCharacteristic1',"
         " {'Value': dbus.Array(args[0], signature='y', variant_level=1)})"),
    ]
    if 'notify' in flags:
        methods += [
            ('StartNotify', '', '', "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(True, variant_level=1)})"),
            ('StopNotify', '', '', "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(False, variant_level=1)})"),
        ]
    root.AddObject(path, CHR, {
        'UUID': dbus.String(uuid16(short), **V),
        'Service': dbus.ObjectPath(service, **V),
        'Value': dbus.Array([dbus.Byte(b) for b in value], signature='y', **V),
        'Notifying': dbus.Boolean(False, **V),
        'Flags': dbus.Array(flags, signature='s', **V),
    }, methods, dbus_interface=MOCK)
    emit_added(path, CHR)


def emit_added(path, iface):
    props = obj(path).GetAll(iface, dbus_interface=PROPS)
    root.EmitSignal(OM, 'InterfacesAdded', 'oa{sa{sv}}',
                    [dbus.ObjectPath(path), {iface: props}], dbus_interface=MOCK)


hr_service = strap + '/service000c'
hr_char = hr_service + '/char000d'
battery_service = strap + '/service0010'
battery_char = battery_service + '/char0011'
add_service(hr_service, 0x180D)
add_characteristic(hr_char, hr_service, 0x2A37, [0x00, 59], ['read', 'notify'])
add_service(battery_service, 0x180F)
add_characteristic(battery_char, battery_service, 0x2A19, [87], ['read'])
setpoint_service = strap + '/service0014'
setpoint_char = setpoint_service + '/char0015'
add_service(setpoint_service, 0xFFF0)
add_characteristic(setpoint_char, setpoint_service, 0xFFF1, [0xD2, 0x00], ['read', 'write'])
log('ready')


def discovering():
    return bool(getprop(adapter, ADP, 'Discovering'))


def notifying():
    return bool(getprop(hr_char, CHR, 'Notifying'))


def notify(bpm):
    setprop(hr_char, CHR, 'Value', dbus.Array([dbus.Byte(0), dbus.Byte(bpm)], signature='y', **V))
    log('notified', bpm)


while not discovering():
    time.sleep(0.05)
log('discovering')

STALL = os.environ.get('FIELDGATE_TEST_STALL')


def start_calls():
    calls = obj(adapter).GetCalls(dbus_interface=MOCK)
    return sum(1 for c in calls if str(c[1]) == 'StartDiscovery')


stall = None          # None → {'starts': n, 'off': bool} while stalled → 'over'
round_no = 0
phase = 'before'      # before → first (60, 61, 62) → dropped → second (90, 91, …)
bpm = 60
last_advert = 0.0
last_notify = 0.0
while True:
    now = time.time()
    if STALL and stall is None and round_no >= 6:
        stall = {'starts': start_calls(), 'off': False}
        log('stalled')
    if isinstance(stall, dict):
        if STALL == 'restart' and start_calls() > stall['starts']:
            stall = 'over'
            log('resumed after a discovery restart')
        elif STALL == 'power':
            if not bool(getprop(adapter, ADP, 'Powered')):
                stall['off'] = True
            elif stall['off'] is True:
                stall['off'] = now
            elif stall['off'] and now - stall['off'] >= 2:
                # Two seconds more silence: long enough for a P/status.
                stall = 'over'
                log('resumed after a power cycle')
    if now - last_advert >= 0.3 and not isinstance(stall, dict):
        round_no += 1
        advertise(round_no)
        last_advert = now
    if phase == 'before' and notifying():
        phase = 'first'
    elif phase == 'first' and now - last_notify >= 0.3:
        if bpm <= 62:
            notify(bpm)
            bpm += 1
        else:
            setprop(hr_char, CHR, 'Notifying', dbus.Boolean(False, **V))
            setprop(strap, DEV, 'ServicesResolved', dbus.Boolean(False, **V))
            setprop(strap, DEV, 'Connected', dbus.Boolean(False, **V))
            log('dropped the connection')
            phase = 'dropped'
            bpm = 90
        last_notify = now
    elif phase == 'dropped' and notifying() and bool(getprop(strap, DEV, 'Connected')):
        log('connected and subscribed again')
        phase = 'second'
    elif phase == 'second' and now - last_notify >= 0.3:
        notify(bpm)
        bpm = 90 + (bpm - 89) % 10
        last_notify = now
    time.sleep(0.02)
